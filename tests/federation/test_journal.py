"""The round journal: whitelisted scalar fields, whole lines, torn lines skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.journal import JournalError, JournalReader, RoundJournal, read_journal


def test_events_round_trip_in_order(tmp_path: Path):
    journal = RoundJournal(tmp_path / "j" / "journal.jsonl")
    journal.record("round_started", server_round=1, node="hospital-a")
    journal.record("round_completed", server_round=1, loss=0.5, num_examples=40, eps_spent=1.2)
    entries = read_journal(journal.path)
    assert [e.event for e in entries] == ["round_started", "round_completed"]
    assert entries[1].fields == {
        "server_round": 1,
        "loss": 0.5,
        "num_examples": 40,
        "eps_spent": 1.2,
    }


def test_reader_is_incremental_and_skips_a_torn_line(tmp_path: Path):
    journal = RoundJournal(tmp_path / "journal.jsonl")
    reader = JournalReader(journal.path)
    assert list(reader.new_entries()) == []
    journal.record("round_started", server_round=1)
    assert [e.fields["server_round"] for e in reader.new_entries()] == [1]
    with journal.path.open("a") as handle:
        handle.write('{"event": "round_comp')  # a writer died mid-line
    assert list(reader.new_entries()) == []
    with journal.path.open("a") as handle:
        handle.write("\n")
    journal.record("round_failed", server_round=2, reason="timeout")
    assert [e.event for e in reader.new_entries()] == ["round_failed"]


def test_unknown_events_and_free_text_are_refused(tmp_path: Path):
    journal = RoundJournal(tmp_path / "journal.jsonl")
    with pytest.raises(JournalError, match="unknown journal event"):
        journal.record("note_seen")
    with pytest.raises(JournalError, match="'text' is not allowed"):
        journal.record("round_started", text="Patient was given aspirin")
    with pytest.raises(JournalError, match="longer than 200"):
        journal.record("round_failed", reason="x" * 201)
    with pytest.raises(JournalError, match="must be a scalar"):
        journal.record("round_completed", loss=[1.0])
    assert not journal.path.exists()
