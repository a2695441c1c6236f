"""Read annotated clinical notes (CoNLL/IOB, BRAT standoff, JSONL) into `Note` objects.

Character offsets always index the note text exactly as stored in the file. Errors are raised as
`NotesError(path, line, reason)`; with ``skip_bad=True`` a bad record becomes a `SkippedRecord`
instead. File-level problems (missing, empty, not UTF-8) always raise. Messages never quote note
text: at most the offending tag or label.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from appliance.notes import EntitySpan, Note, NotesError, ReadResult, SkippedRecord, WordSpan

PathLike = str | os.PathLike[str]
Labels = Collection[str] | None

_TAG = re.compile(r"^(?:O|[BI]-\S+)$")
_BRAT_SPAN = re.compile(r"^(\S+) (\d+) (\d+)$")
_BRAT_IGNORED = ("R", "E", "A", "M", "N", "#", "*")
_FORMATS = ("auto", "conll", "brat", "jsonl")


# ----------------------------------------------------------------------------- shared helpers


def _read_file(path: Path, strip_bom: bool) -> str:
    """The file decoded as strict UTF-8 (newlines untouched, so offsets stay exact)."""
    if not path.is_file():
        raise NotesError(str(path), 0, "file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NotesError(str(path), line, f"invalid UTF-8 (byte {exc.start} of the file)") from None
    return text[1:] if strip_bom and text.startswith("\ufeff") else text


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """1-based (line number, line) pairs, without line terminators (only \\n and \\r\\n)."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _empty(path: Path) -> NotesError:
    return NotesError(str(path), 0, "empty file (no records)")


def validate_entities(
    text: str,
    entities: Sequence[EntitySpan],
    labels: Labels,
    path: str,
    line: int,
    entity_lines: Sequence[int] | None = None,
) -> tuple[EntitySpan, ...]:
    """Check entity spans against `text`; return them sorted by (start, end).

    Offsets must be ints with ``0 <= start < end <= len(text)``, not start or end on whitespace,
    not overlap each other, and (if `labels` is given) carry an allowed label. Errors are located
    at `entity_lines[i]` when given, else at `line`.
    """

    def where(i: int) -> int:
        return entity_lines[i] if entity_lines is not None else line

    for i, ent in enumerate(entities):
        start, end = ent.start, ent.end
        if type(start) is not int or type(end) is not int:
            raise NotesError(path, where(i), "entity offsets must be integers")
        if not 0 <= start < end <= len(text):
            raise NotesError(
                path,
                where(i),
                f"entity offsets {start}-{end} out of range (text has {len(text)} chars)",
            )
        if text[start].isspace() or text[end - 1].isspace():
            raise NotesError(
                path,
                where(i),
                f"offsets not on the text: entity {start}-{end} starts or ends on whitespace",
            )
        if labels is not None and ent.label not in labels:
            raise NotesError(path, where(i), f"unknown label {ent.label!r}")
    order = sorted(range(len(entities)), key=lambda i: (entities[i].start, entities[i].end))
    for prev, cur in pairwise(order):
        if entities[cur].start < entities[prev].end:
            a, b = entities[prev], entities[cur]
            raise NotesError(
                path, where(cur), f"overlapping entities {a.start}-{a.end} and {b.start}-{b.end}"
            )
    return tuple(entities[i] for i in order)


def _collect(result: ReadResult, skip_bad: bool, build: Callable[[], Note | None]) -> None:
    """Run `build`; keep its note, or record the NotesError as skipped when `skip_bad`."""
    try:
        note = build()
    except NotesError as exc:
        if not skip_bad:
            raise
        result.skipped.append(SkippedRecord(exc.path, exc.line, exc.reason))
        return
    if note is not None:
        result.notes.append(note)


# ----------------------------------------------------------------------------- CoNLL / IOB


def _conll_sentences(text: str) -> Iterator[list[tuple[int, str]]]:
    """Groups of (line number, line) separated by blank lines (or -DOCSTART- lines)."""
    rows: list[tuple[int, str]] = []
    for number, line in _lines(text):
        line = line.rstrip()
        if not line or line.split("\t", 1)[0] == "-DOCSTART-":
            if rows:
                yield rows
            rows = []
        else:
            rows.append((number, line))
    if rows:
        yield rows


def _conll_row(path: str, number: int, line: str, labels: Labels) -> tuple[str, str]:
    cols = line.split("\t")
    if len(cols) != 2:
        raise NotesError(
            path, number, f"expected 2 tab-separated columns (token, tag), got {len(cols)}"
        )
    token, tag = cols
    if not token:
        raise NotesError(path, number, "empty token")
    if any(ch.isspace() for ch in token):
        raise NotesError(path, number, "token contains whitespace")
    if not _TAG.match(tag):
        raise NotesError(path, number, f"bad tag {tag!r} (expected O, B-<label> or I-<label>)")
    if labels is not None and tag != "O" and tag[2:] not in labels:
        raise NotesError(path, number, f"unknown label {tag[2:]!r}")
    return token, tag


def _conll_note(path: Path, rows: list[tuple[int, str]], labels: Labels) -> Note:
    name = str(path)
    tokens: list[str] = []
    words: list[WordSpan] = []
    entities: list[EntitySpan] = []
    open_entity: tuple[int, str] | None = None  # (start, label) of the entity being extended
    offset = 0
    for number, line in rows:
        token, tag = _conll_row(name, number, line, labels)
        span = (offset, offset + len(token))
        if tag.startswith("I-"):
            if open_entity is None or open_entity[1] != tag[2:]:
                raise NotesError(name, number, f"{tag!r} without a preceding B-/I-{tag[2:]}")
        else:
            if open_entity is not None:
                entities.append(EntitySpan(open_entity[0], words[-1][1], open_entity[1]))
            open_entity = (span[0], tag[2:]) if tag.startswith("B-") else None
        tokens.append(token)
        words.append(span)
        offset = span[1] + 1
    if open_entity is not None:
        entities.append(EntitySpan(open_entity[0], words[-1][1], open_entity[1]))
    text = " ".join(tokens)
    first = rows[0][0]
    checked = validate_entities(text, entities, labels, name, first)
    return Note(f"{path.stem}:{first}", text, checked, tuple(words), f"{path}:{first}")


def read_conll(path: PathLike, labels: Labels = None, skip_bad: bool = False) -> ReadResult:
    """CoNLL/IOB TSV (``token<TAB>tag``, blank line between sentences): one Note per sentence."""
    file = Path(path)
    result = ReadResult()
    records = 0
    for rows in _conll_sentences(_read_file(file, strip_bom=True)):
        records += 1
        _collect(result, skip_bad, partial(_conll_note, file, rows, labels))
    if records == 0:
        raise _empty(file)
    return result


# ----------------------------------------------------------------------------- BRAT standoff


def _brat_entity(ann: str, number: int, fields: list[str], text: str) -> EntitySpan:
    if len(fields) != 3:
        raise NotesError(ann, number, "text-bound annotation needs 3 tab-separated fields")
    if ";" in fields[1]:
        raise NotesError(ann, number, "discontinuous spans are not supported")
    match = _BRAT_SPAN.match(fields[1])
    if match is None:
        raise NotesError(ann, number, "expected '<label> <start> <end>' in the second field")
    label, start, end = match.group(1), int(match.group(2)), int(match.group(3))
    if not 0 <= start < end <= len(text):
        raise NotesError(
            ann, number, f"entity offsets {start}-{end} out of range (text has {len(text)} chars)"
        )
    # A mention spanning a line break is written on one .ann line with the break as a space.
    span = text[start:end]
    if fields[2] not in (span, span.replace("\r", " ").replace("\n", " ")):
        raise NotesError(
            ann, number, f"offsets not on the text: mention differs from text {start}-{end}"
        )
    return EntitySpan(start, end, label)


def _brat_note(txt: Path, text: str, ann: Path, ann_text: str, labels: Labels) -> Note:
    entities: list[EntitySpan] = []
    lines: list[int] = []
    for number, line in _lines(ann_text):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if fields[0].startswith("T"):
            entities.append(_brat_entity(str(ann), number, fields, text))
            lines.append(number)
        elif not fields[0].startswith(_BRAT_IGNORED):
            raise NotesError(str(ann), number, "unrecognized annotation line")
    checked = validate_entities(text, entities, labels, str(ann), 1, lines)
    return Note(txt.stem, text, checked, None, f"{txt}:1")


def _brat_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise NotesError(str(path), 0, "no .txt files in directory")
        return files
    if not path.is_file():
        raise NotesError(str(path), 0, "file not found")
    return [path]


def read_brat(path: PathLike, labels: Labels = None, skip_bad: bool = False) -> ReadResult:
    """BRAT standoff: a ``.txt`` file with its ``.ann`` beside it, or a directory of such pairs.

    One Note per ``.txt`` file. A bad annotation makes the whole note a bad record.
    """
    result = ReadResult()
    for txt in _brat_files(Path(path)):
        ann = txt.with_suffix(".ann")
        if not ann.is_file():  # file-level: never skippable
            raise NotesError(str(ann), 0, f"missing .ann file for {txt.name}")
        text = _read_file(txt, strip_bom=False)
        if not text.strip():
            raise _empty(txt)
        ann_text = _read_file(ann, strip_bom=True)
        _collect(result, skip_bad, partial(_brat_note, txt, text, ann, ann_text, labels))
    return result


# ----------------------------------------------------------------------------- JSONL


def _json_entity(path: str, number: int, raw: Any) -> EntitySpan:
    if not isinstance(raw, dict):
        raise NotesError(path, number, "each entity must be a JSON object")
    start, end, label = raw.get("start"), raw.get("end"), raw.get("label")
    if type(start) is not int or type(end) is not int:
        raise NotesError(path, number, "entity 'start' and 'end' must be integers")
    if not isinstance(label, str) or not label:
        raise NotesError(path, number, "entity 'label' must be a non-empty string")
    return EntitySpan(start, end, label)


def _jsonl_note(path: Path, number: int, line: str, labels: Labels) -> Note:
    name = str(path)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise NotesError(name, number, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise NotesError(name, number, "record must be a JSON object")
    text, note_id, raw = record.get("text"), record.get("id"), record.get("entities", [])
    if not isinstance(text, str):
        raise NotesError(name, number, "'text' must be a string")
    if note_id is not None and not isinstance(note_id, str):
        raise NotesError(name, number, "'id' must be a string")
    if not isinstance(raw, list):
        raise NotesError(name, number, "'entities' must be a list")
    entities = [_json_entity(name, number, item) for item in raw]
    checked = validate_entities(text, entities, labels, name, number)
    return Note(note_id or f"{path.stem}:{number}", text, checked, None, f"{path}:{number}")


def read_jsonl(path: PathLike, labels: Labels = None, skip_bad: bool = False) -> ReadResult:
    """JSON lines ``{"id"?, "text", "entities": [{"start", "end", "label"}]}``; one Note a line."""
    file = Path(path)
    result = ReadResult()
    records = 0
    for number, line in _lines(_read_file(file, strip_bom=True)):
        if not line.strip():
            continue
        records += 1
        _collect(result, skip_bad, partial(_jsonl_note, file, number, line, labels))
    if records == 0:
        raise _empty(file)
    return result


# ----------------------------------------------------------------------------- dispatch


def detect_format(path: PathLike) -> str:
    """``conll``, ``brat`` or ``jsonl`` from the path; ValueError when it cannot tell."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        return "brat"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".conll", ".iob", ".txt") and p.with_suffix(".ann").is_file():
        return "brat"
    if suffix in (".tsv", ".conll", ".iob"):
        return "conll"
    raise ValueError(
        f"{path}: cannot tell the notes format (use .jsonl, .tsv/.conll/.iob, "
        "a .txt with its .ann, or a BRAT directory; or pass fmt explicitly)"
    )


def read_notes(
    path: PathLike, fmt: str = "auto", labels: Labels = None, skip_bad: bool = False
) -> ReadResult:
    """Read notes from `path` in format `fmt` (``auto``, ``conll``, ``brat`` or ``jsonl``)."""
    if fmt not in _FORMATS:
        raise ValueError(f"{path}: unknown notes format {fmt!r} (expected one of {_FORMATS})")
    kind = detect_format(path) if fmt == "auto" else fmt
    readers = {"conll": read_conll, "brat": read_brat, "jsonl": read_jsonl}
    return readers[kind](path, labels, skip_bad)


def read_text_file(path: Path) -> str:
    """One note's text from a UTF-8 file; errors name the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise NotesError(str(path), 0, f"cannot read: {err.strerror}") from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise NotesError(str(path), line, f"not valid UTF-8 (byte {err.start})") from err
