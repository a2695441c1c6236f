"""`appliance notes import | export | stats` on real files and a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.annotations import Annotation
from appliance.cli import main
from appliance.note_store import NoteStore
from appliance.notes import EntitySpan
from appliance.readers import read_notes


def _record(note_id: str, text: str, *spans: tuple[int, int, str]) -> dict[str, object]:
    return {
        "id": note_id,
        "text": text,
        "entities": [{"start": s, "end": e, "label": label} for s, e, label in spans],
    }


NOTES = [
    _record("a", "Aspirin caused fever.", (0, 7, "Chemical")),
    _record("b", "No rash.", (3, 7, "Disease")),
    _record("c", "患者は頭痛 after 😀 heparin", (14, 21, "Chemical")),
]


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def test_import_is_idempotent_and_export_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    source, store = _jsonl(tmp_path / "notes.jsonl", NOTES), str(tmp_path / "notes.sqlite")

    # Execute
    first = _run(capsys, "notes", "import", str(source), "--store", store)
    again = _run(capsys, "notes", "import", str(source), "--store", store)
    stats = _run(capsys, "notes", "stats", "--store", store)
    exported = _run(capsys, "notes", "export", "--store", store, "--out", str(tmp_path / "o.jsonl"))

    # Assert
    assert first[0] == 0 and (first[1]["read"], first[1]["stored"]) == (3, 3)
    assert again[0] == 0 and (again[1]["stored"], again[1]["duplicate"]) == (0, 3)
    assert stats[1]["notes"] == 3 and stats[1]["entities_by_category"] == {
        "Chemical": 2,
        "Disease": 1,
    }
    assert exported[1]["notes"] == 3
    back = {n.note_id: n for n in read_notes(tmp_path / "o.jsonl").notes}
    assert {k: (n.text, n.entities) for k, n in back.items()} == {
        r["id"]: (
            r["text"],
            tuple(EntitySpan(e["start"], e["end"], e["label"]) for e in r["entities"]),
        )  # type: ignore[index, union-attr]
        for r in NOTES
    }


def test_a_bad_record_names_its_line_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the third record's entity runs off its text
    bad = [
        *NOTES[:2],
        {"id": "z", "text": "short", "entities": [{"start": 0, "end": 9, "label": "Chemical"}]},
    ]
    source, store = _jsonl(tmp_path / "bad.jsonl", bad), tmp_path / "notes.sqlite"

    # Execute
    code, _, err = _run(capsys, "notes", "import", str(source), "--store", str(store))

    # Assert
    assert code == 3
    assert f"{source}:3:" in err and "out of range" in err
    with NoteStore(store) as opened:
        assert opened.stats().notes == 0


def test_a_deleted_note_is_refused_and_a_changed_one_needs_a_new_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: note "b" was withdrawn; note "a" is stored with other entities
    store = tmp_path / "notes.sqlite"
    with NoteStore(store) as opened:
        opened.delete("b", "privacy-officer", "consent withdrawn")
        opened.submit(Annotation("a", 1, "Aspirin caused fever.", (), "coder", "corrected"), "ehr")
    source = _jsonl(tmp_path / "notes.jsonl", NOTES)

    # Execute
    code, _, err = _run(capsys, "notes", "import", str(source), "--store", str(store))
    fixed = _run(capsys, "notes", "import", str(source), "--store", str(store), "--revision", "2")

    # Assert
    assert code == 3 and "stored at revision 1 with other content" in err
    assert f"{source}:1: note 'a'" in err
    assert fixed[0] == 0 and fixed[1]["refused_deleted"] == ["b"] and fixed[1]["stored"] == 2
    audit = _run(capsys, "notes", "audit", "--store", str(store), "--limit", "3")[1]["entries"]
    assert [(e["action"], e["note_id"], e["outcome"]) for e in audit][-1][:2] == ("submit", "a")
    assert len(audit) == 3 and not any("Aspirin" in json.dumps(e) for e in audit)
    with NoteStore(store) as opened:
        assert sorted(n.note_id for n in opened.snapshot().notes) == ["a", "c"]


def test_conll_notes_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "notes.tsv"
    source.write_text("Lithium\tB-Chemical\ntoxicity\tB-Disease\n\nNo\tO\nrash\tB-Disease\n")
    code, out, _ = _run(
        capsys, "notes", "import", str(source), "--store", str(tmp_path / "s.sqlite")
    )
    assert code == 0 and (out["read"], out["stored"]) == (2, 2)


def test_an_unreadable_store_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "notes.sqlite"
    store.write_bytes(b"not a database at all" * 100)
    code, _, err = _run(capsys, "notes", "stats", "--store", str(store))
    assert code == 3 and str(store) in err
