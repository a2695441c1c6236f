"""Writing notes back as CoNLL: the shards the demo gives each hospital read back identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.notes import EntitySpan, Note
from appliance.readers import read_conll
from appliance.writers import iob_tags, write_conll

DATA = Path(__file__).resolve().parents[2] / "data" / "bc5cdr" / "devel.tsv"


def test_bc5cdr_notes_survive_a_round_trip(tmp_path: Path):
    notes = read_conll(DATA).notes[:200]
    back = read_conll(write_conll(notes, tmp_path / "shard.tsv")).notes
    assert [(n.text, n.words, n.entities) for n in back] == [
        (n.text, n.words, n.entities) for n in notes
    ]
    assert sum(len(n.entities) for n in back) > 100


def test_entities_become_iob_tags():
    note = Note("n", "Cisplatin induced acute kidney injury", (
        EntitySpan(0, 9, "Chemical"), EntitySpan(18, 37, "Disease")),
        ((0, 9), (10, 17), (18, 23), (24, 30), (31, 37)))  # fmt: skip
    assert iob_tags(note) == ["B-Chemical", "O", "B-Disease", "I-Disease", "I-Disease"]


def test_a_note_without_word_spans_or_with_a_split_word_is_refused():
    with pytest.raises(ValueError, match="no word spans"):
        iob_tags(Note("n", "aspirin", (EntitySpan(0, 7, "Chemical"),), None, "x.jsonl:3"))
    split = Note("n", "aspirin", (EntitySpan(0, 3, "Chemical"),), ((0, 7),), "x.tsv:9")
    with pytest.raises(ValueError, match=r"x.tsv:9: entity \[0, 3\) does not start and end"):
        iob_tags(split)
