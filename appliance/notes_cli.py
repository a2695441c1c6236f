"""`appliance notes import | export | stats`: the box's annotated-notes store for IT, as JSON.

`import` reads notes in any supported format (CoNLL/IOB, brat, JSONL) and submits each as one
annotated revision, so a hospital's existing annotated corpus becomes training material beside
what clinicians send through the curation service. Every note is checked before the first one
is written: a bad record stops the import with its file and line and stores nothing. Importing
the same file again stores nothing twice (each note is a duplicate); a note id deleted from the
store is refused and listed, never stored again.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.annotations import KINDS, Annotation, AnnotationError, validate_annotation
from appliance.exits import EXIT_INPUT, CommandError
from appliance.note_store import NoteDeleted, NoteStore, RevisionConflict, StoreError
from appliance.notes import Note, NotesError
from appliance.readers import read_notes


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `notes` and its three commands to the `appliance` parser."""
    notes = sub.add_parser("notes", help="import, export or count the box's annotated notes")
    commands = notes.add_subparsers(dest="notes_command", required=True)
    imports = commands.add_parser("import", help="submit the notes of files into the store")
    imports.add_argument("files", nargs="+", type=Path, help="CoNLL/IOB, brat dir or JSONL")
    imports.add_argument("--format", default="auto", choices=("auto", "conll", "brat", "jsonl"))
    imports.add_argument("--revision", type=int, default=1, help="revision of every note (1)")
    imports.add_argument("--annotator", default="import", help="pseudonymous annotator id")
    imports.add_argument("--kind", default="corrected", choices=KINDS)
    exports = commands.add_parser("export", help="write the store's training notes as JSONL")
    exports.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    stats = commands.add_parser("stats", help="counts by kind and category, size on disk")
    audit = commands.add_parser("audit", help="who submitted or deleted which note, and when")
    audit.add_argument("--limit", type=int, default=100, help="newest entries (100)")
    for parser in (imports, exports, stats, audit):
        parser.add_argument("--store", type=Path, required=True, help="the note store (SQLite)")
    imports.set_defaults(handler=import_command)
    exports.set_defaults(handler=export_command)
    stats.set_defaults(handler=stats_command)
    audit.set_defaults(handler=audit_command)


def _annotation(note: Note, args: argparse.Namespace) -> Annotation:
    annotation = Annotation.of_note(note, args.revision, args.annotator, args.kind)
    try:
        return validate_annotation(annotation)
    except AnnotationError as err:
        path, _, line = note.source.rpartition(":")
        raise NotesError(path or note.source, int(line) if line.isdigit() else 0, str(err)) from err


def import_command(args: argparse.Namespace) -> dict[str, Any]:
    notes = [n for path in args.files for n in read_notes(path, args.format).notes]
    annotations = [(note.source, _annotation(note, args)) for note in notes]
    counts = {"stored": 0, "duplicate": 0, "stale": 0}
    deleted: list[str] = []
    conflicts: list[str] = []
    with _open(args.store) as store:
        for source, annotation in annotations:
            try:
                counts[store.submit(annotation, "import").outcome] += 1
            except NoteDeleted:
                deleted.append(annotation.note_id)
            except RevisionConflict:
                conflicts.append(f"{source}: note {annotation.note_id!r}")
    result = {"store": str(args.store), "read": len(notes), **counts, "refused_deleted": deleted}
    if conflicts:
        raise CommandError(
            f"{len(conflicts)} notes are stored at revision {args.revision} with other content "
            f"(the rest were imported: {json.dumps(result)}); import them again with a higher "
            f"--revision: {'; '.join(conflicts[:5])}",
            exit_code=EXIT_INPUT,
        )
    return result


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    with _open(args.store) as store:
        snapshot = store.snapshot()
    with args.out.open("w", encoding="utf-8") as out:
        for note in snapshot.notes:
            record = {
                "id": note.note_id,
                "text": note.text,
                "entities": [
                    {"start": e.start, "end": e.end, "label": e.label} for e in note.entities
                ],
                "revision": note.revision,
                "kind": note.kind,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"store": str(args.store), "out": str(args.out), "notes": len(snapshot.notes)}


def stats_command(args: argparse.Namespace) -> dict[str, Any]:
    with _open(args.store) as store:
        stats = store.stats()
    return {
        "store": str(args.store),
        "notes": stats.notes,
        "by_kind": dict(stats.by_kind),
        "entities_by_category": dict(stats.entities_by_label),
        "deletions": stats.deletions,
        "changed_since_round": stats.changed_since_round,
        "bytes_on_disk": stats.bytes_on_disk,
    }


def audit_command(args: argparse.Namespace) -> dict[str, Any]:
    if args.limit < 1:
        raise ValueError(f"--limit: must be at least 1, got {args.limit}")
    with _open(args.store) as store:
        entries = store.audit(args.limit)
    return {"store": str(args.store), "entries": [asdict(entry) for entry in entries]}


def _open(path: Path) -> NoteStore:
    try:
        return NoteStore(path)
    except StoreError as err:
        raise CommandError(str(err), exit_code=EXIT_INPUT) from err
