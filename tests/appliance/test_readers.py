"""Readers: CoNLL/IOB, BRAT standoff, JSONL -> Note, with exact offsets and located errors."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from appliance.notes import EntitySpan, Note, NotesError
from appliance.readers import (
    detect_format,
    read_brat,
    read_conll,
    read_jsonl,
    read_notes,
    validate_entities,
)

DEVEL = Path(__file__).resolve().parents[2] / "data" / "bc5cdr" / "devel.tsv"
LABELS = {"Chemical", "Disease"}
SECRET = "Zyxwvut"  # a word of "confidential" note text that must never reach a message


def where(path: Path, line: int) -> str:
    """Regex for the ``file:line:`` prefix of a NotesError message."""
    return re.escape(f"{path}:{line}:")


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def brat_pair(tmp_path: Path, stem: str, text: str, ann: str) -> Path:
    write(tmp_path / f"{stem}.ann", ann)
    return write(tmp_path / f"{stem}.txt", text)


# ----------------------------------------------------------------------------- real data


def test_bc5cdr_devel_round_trip() -> None:
    result = read_conll(DEVEL, labels=LABELS)
    assert result.skipped == []
    assert len(result.notes) == 4581
    counts = Counter(e.label for note in result.notes for e in note.entities)
    assert counts == {"Chemical": 5347, "Disease": 4246}
    lines = DEVEL.read_text(encoding="utf-8").split("\n")
    for note in result.notes:
        first = int(note.note_id.split(":")[1])
        assert note.source == f"{DEVEL}:{first}"
        assert note.words is not None
        tokens = [lines[first - 1 + i].split("\t")[0] for i in range(len(note.words))]
        assert note.text == " ".join(tokens)
        assert [note.text[s:e] for s, e in note.words] == tokens
        assert list(note.entities) == sorted(note.entities, key=lambda e: e.start)
        for ent in note.entities:
            inside = [note.text[s:e] for s, e in note.words if ent.start <= s and e <= ent.end]
            assert note.text[ent.start : ent.end] == " ".join(inside)


# ----------------------------------------------------------------------------- CoNLL


def test_conll_good(tmp_path: Path) -> None:
    path = write(
        tmp_path / "n.tsv",
        "Aspirin\tB-Chemical\ncauses\tO\nacute\tB-Disease\nrenal\tI-Disease\nfailure\tI-Disease\n"
        ".\tO\n\n\nNo\tO\nDisease\tB-Disease\n",
    )
    notes = read_conll(path).notes
    assert [n.note_id for n in notes] == ["n:1", "n:9"]
    first = notes[0]
    assert first.text == "Aspirin causes acute renal failure ."
    assert first.words == ((0, 7), (8, 14), (15, 20), (21, 26), (27, 34), (35, 36))
    assert first.entities == (EntitySpan(0, 7, "Chemical"), EntitySpan(15, 34, "Disease"))
    assert notes[1].entities == (EntitySpan(3, 10, "Disease"),)
    assert notes[1].source == f"{path}:9"


def test_conll_b_after_b_starts_new_entity(tmp_path: Path) -> None:
    path = write(tmp_path / "n.tsv", "a\tB-Chemical\nb\tB-Chemical\nc\tI-Chemical\n")
    note = read_conll(path).notes[0]
    assert note.entities == (EntitySpan(0, 1, "Chemical"), EntitySpan(2, 5, "Chemical"))


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ("ok\tO\nbad line\n", 2, "expected 2 tab-separated columns"),
        ("ok\tO\na\tO\textra\n", 2, "expected 2 tab-separated columns"),
        ("ok\tO\n\tO\n", 2, "empty token"),
        ("ok\tO\nx\tB_Chemical\n", 2, "bad tag 'B_Chemical'"),
        ("ok\tO\nx\tI-Disease\n", 2, "'I-Disease' without a preceding B-/I-Disease"),
        ("x\tB-Chemical\ny\tI-Disease\n", 2, "without a preceding"),
        ("ok\tO\n\nx\tB-Drug\n", 3, "unknown label 'Drug'"),
    ],
)
def test_conll_malformed(tmp_path: Path, body: str, line: int, reason: str) -> None:
    path = write(tmp_path / "bad.tsv", body)
    with pytest.raises(NotesError, match=where(path, line) + ".*" + re.escape(reason)):
        read_conll(path, labels=LABELS)


def test_conll_skip_bad(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mix.tsv",
        "good\tO\n\nbad\tI-Disease\nmore\tO\n\nalso\tO\ngood\tB-Disease\n\nx\ty\tz\n",
    )
    result = read_conll(path, labels=LABELS, skip_bad=True)
    assert [n.note_id for n in result.notes] == ["mix:1", "mix:6"]
    assert [(s.path, s.line) for s in result.skipped] == [(str(path), 3), (str(path), 9)]
    assert "without a preceding" in result.skipped[0].reason
    assert str(result.skipped[1]).startswith(f"{path}:9: skipped:")


# ----------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize("reader", [read_conll, read_jsonl])
def test_empty_file(tmp_path: Path, reader: object) -> None:
    path = write(tmp_path / "empty.dat", "\n  \n")
    with pytest.raises(NotesError, match=where(path, 0) + " empty file"):
        reader(path)  # type: ignore[operator]


@pytest.mark.parametrize("reader", [read_conll, read_jsonl, read_brat])
def test_missing_file(tmp_path: Path, reader: object) -> None:
    path = tmp_path / "nope.tsv"
    with pytest.raises(NotesError, match=where(path, 0) + " file not found"):
        reader(path)  # type: ignore[operator]


def test_bad_utf8_names_line_even_with_skip_bad(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"ok\tO\n\ncaf\xe9\tO\n")
    with pytest.raises(NotesError, match=where(path, 3) + " invalid UTF-8"):
        read_conll(path, skip_bad=True)
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(NotesError, match=where(jsonl, 2) + " invalid UTF-8"):
        read_jsonl(jsonl)


# ----------------------------------------------------------------------------- BRAT


BRAT_TEXT = "Aspirin caused\nacute renal failure.\r\nNo more.\n"
BRAT_ANN = (
    "T1\tChemical 0 7\tAspirin\n"
    "T2\tDisease 15 34\tacute renal failure\n"
    "R1\tCause Arg1:T1 Arg2:T2\n"
    "A1\tNegated T2\n"
    "#1\tAnnotatorNotes T1\tsome note\n"
    "E1\tEvent:T1\n"
    "N1\tReference T1 Wikipedia:123\tAspirin\n"
)


def test_brat_file_good(tmp_path: Path) -> None:
    txt = brat_pair(tmp_path, "doc1", BRAT_TEXT, BRAT_ANN)
    result = read_brat(txt, labels=LABELS)
    (note,) = result.notes
    assert note.note_id == "doc1"
    assert note.text == BRAT_TEXT  # CRLF and all: offsets index the file as stored
    assert note.words is None
    assert note.entities == (EntitySpan(0, 7, "Chemical"), EntitySpan(15, 34, "Disease"))


def test_brat_directory_sorted_and_auto(tmp_path: Path) -> None:
    brat_pair(tmp_path, "b", "Beta text", "T1\tDisease 0 4\tBeta\n")
    brat_pair(tmp_path, "a", "Alpha text", "")
    result = read_notes(tmp_path)
    assert [n.note_id for n in result.notes] == ["a", "b"]
    assert result.notes[0].entities == ()
    assert detect_format(tmp_path / "a.txt") == "brat"


@pytest.mark.parametrize(
    ("ann", "line", "reason"),
    [
        ("T1\tChemical 0 7\tAspirin\nT2\tDisease 0 3;8 14\tAsp caused\n", 2, "discontinuous"),
        ("T1\tChemical 0 7\tAspirin\nT2\tDisease 40 90\tx\n", 2, "out of range"),
        ("T1\tChemical 1 8\tAspirin\n", 1, "offsets not on the text"),
        ("T1\tChemical 0 8\tAspirin \n", 1, "offsets not on the text"),
        ("T1\tChemical 0 7\tAspirin\nT2\tChemical 3 14\tirin caused\n", 2, "overlapping"),
        ("\nT1\tDrug 0 7\tAspirin\n", 2, "unknown label 'Drug'"),
        ("T1\tChemical zero 7\tAspirin\n", 1, "expected '<label> <start> <end>'"),
        ("T1\tChemical 0 7\n", 1, "3 tab-separated fields"),
    ],
)
def test_brat_malformed(tmp_path: Path, ann: str, line: int, reason: str) -> None:
    txt = brat_pair(tmp_path, "doc", BRAT_TEXT, ann)
    ann_path = tmp_path / "doc.ann"
    with pytest.raises(NotesError, match=where(ann_path, line) + ".*" + re.escape(reason)) as err:
        read_brat(txt, labels=LABELS)
    assert "caused" not in str(err.value) and "renal" not in str(err.value)


def test_brat_missing_ann(tmp_path: Path) -> None:
    write(tmp_path / "lonely.txt", "Some text")
    with pytest.raises(NotesError, match=where(tmp_path / "lonely.ann", 0) + " missing .ann"):
        read_brat(tmp_path, skip_bad=True)


def test_brat_skip_bad(tmp_path: Path) -> None:
    brat_pair(tmp_path, "a", "Alpha text", "T1\tDisease 0 5\tAlpha\n")
    brat_pair(tmp_path, "b", "Beta text", "T1\tDisease 0 2;3 4\tBe a\n")
    brat_pair(tmp_path, "c", "Gamma text", "T1\tDisease 0 4\tGamm\n")
    result = read_brat(tmp_path, skip_bad=True)
    assert [n.note_id for n in result.notes] == ["a", "c"]
    assert [(s.path, s.line) for s in result.skipped] == [(str(tmp_path / "b.ann"), 1)]
    assert "discontinuous spans are not supported" in result.skipped[0].reason


# ----------------------------------------------------------------------------- JSONL


def jsonl(path: Path, *records: object) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return write(path, "\n".join(lines) + "\n")


def test_jsonl_good(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "notes.jsonl",
        {
            "id": "n1",
            "text": "Él tomó 💊 aspirina.",
            "entities": [
                {"start": 10, "end": 18, "label": "Chemical"},
                {"start": 0, "end": 2, "label": "Disease"},
            ],
        },
        "",
        {"text": "no entities", "entities": []},
    )
    notes = read_notes(path, labels=LABELS).notes
    assert [n.note_id for n in notes] == ["n1", "notes:3"]
    assert notes[0].entities == (EntitySpan(0, 2, "Disease"), EntitySpan(10, 18, "Chemical"))
    assert notes[0].text[10:18] == "aspirina"
    assert notes[1].source == f"{path}:3"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ('{"text": "abc", "entities": [', "invalid JSON"),
        ("[1, 2]", "record must be a JSON object"),
        ({"text": 5, "entities": []}, "'text' must be a string"),
        (
            {"text": "Zyxwvut abc", "entities": [{"start": 0, "end": 99, "label": "Disease"}]},
            "out of range",
        ),
        (
            {"text": "Zyxwvut abc", "entities": [{"start": 3, "end": 1, "label": "Disease"}]},
            "out of range",
        ),
        (
            {"text": "Zyxwvut abc", "entities": [{"start": 0, "end": 8, "label": "Disease"}]},
            "offsets not on the text",
        ),
        (
            {"text": "Zyxwvut abc", "entities": [{"start": 0, "end": "7", "label": "Disease"}]},
            "must be integers",
        ),
        (
            {
                "text": "Zyxwvut abc",
                "entities": [
                    {"start": 0, "end": 7, "label": "Disease"},
                    {"start": 5, "end": 11, "label": "Chemical"},
                ],
            },
            "overlapping",
        ),
        (
            {"text": "Zyxwvut abc", "entities": [{"start": 0, "end": 7, "label": "Gene"}]},
            "unknown label 'Gene'",
        ),
    ],
)
def test_jsonl_malformed(tmp_path: Path, record: object, reason: str) -> None:
    path = jsonl(tmp_path / "bad.jsonl", {"text": "fine"}, record)
    with pytest.raises(NotesError, match=where(path, 2) + ".*" + re.escape(reason)) as err:
        read_jsonl(path, labels=LABELS)
    assert SECRET not in str(err.value)


def test_jsonl_skip_bad(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "mix.jsonl",
        {"text": "one"},
        "{not json",
        {"text": "two"},
        {"text": "abc", "entities": [{"start": 0, "end": 3, "label": "Gene"}]},
    )
    result = read_jsonl(path, labels=LABELS, skip_bad=True)
    assert [n.text for n in result.notes] == ["one", "two"]
    assert [s.line for s in result.skipped] == [2, 4]


# ----------------------------------------------------------------------------- dispatch, helper


def test_read_notes_dispatch(tmp_path: Path) -> None:
    conll = write(tmp_path / "x.iob", "a\tO\n")
    assert read_notes(conll).notes[0].text == "a"
    assert read_notes(conll, fmt="conll").notes[0].note_id == "x:1"
    assert detect_format(tmp_path / "y.json") == "jsonl"
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "z.csv"))):
        read_notes(tmp_path / "z.csv")
    with pytest.raises(ValueError, match="no.txt"):
        read_notes(write(tmp_path / "no.txt", "text without ann"))
    with pytest.raises(ValueError, match="unknown notes format 'xml'"):
        read_notes(conll, fmt="xml")


def test_validate_entities_sorts_and_locates() -> None:
    note = Note("n", "ab cd ef")
    ents = [EntitySpan(6, 8, "X"), EntitySpan(0, 2, "Y")]
    assert validate_entities(note.text, ents, None, "f", 1) == (ents[1], ents[0])
    with pytest.raises(NotesError, match=r"^f:7: overlapping"):
        validate_entities(note.text, [*ents, EntitySpan(1, 5, "Z")], None, "f", 1, [3, 5, 7])
    with pytest.raises(NotesError, match=r"^f:1: entity offsets must be integers"):
        validate_entities(note.text, [EntitySpan(True, 2, "X")], None, "f", 1)  # type: ignore[arg-type]
