"""The note store's SQLite schema, its migrations and the statements that read and write it.

``MIGRATIONS[i]`` takes a database at schema version ``i`` to version ``i + 1``; the store runs the
missing ones in order inside one write transaction and records the result in
``PRAGMA user_version``. Migrations use single statements only (``executescript`` would commit the
surrounding transaction). The helpers below run inside the caller's transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Migration = Callable[[sqlite3.Connection], None]

PRAGMAS = (
    "PRAGMA synchronous = FULL",
    "PRAGMA secure_delete = ON",
    "PRAGMA foreign_keys = ON",
)
SPLIT_KEY = "split_key"
LAST_SEQ = "last_seq"
ROUND_SEQ = "round_seq"

_V1 = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value NOT NULL
    )""",
    """CREATE TABLE notes (
        note_id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL CHECK (revision >= 1),
        text TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('corrected', 'accepted', 'rejected')),
        annotator TEXT NOT NULL,
        model_version TEXT NOT NULL,
        digest TEXT NOT NULL,
        seq INTEGER NOT NULL UNIQUE,
        submitted_at TEXT NOT NULL
    )""",
    """CREATE TABLE entities (
        note_id TEXT NOT NULL REFERENCES notes (note_id) ON DELETE CASCADE,
        start_char INTEGER NOT NULL,
        end_char INTEGER NOT NULL,
        label TEXT NOT NULL,
        score REAL,
        PRIMARY KEY (note_id, start_char)
    )""",
    """CREATE TABLE tombstones (
        note_id TEXT PRIMARY KEY,
        deleted_at TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    )""",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('submit', 'delete')),
        note_id TEXT NOT NULL,
        revision INTEGER,
        outcome TEXT NOT NULL
    )""",
)


def _v1_initial(db: sqlite3.Connection) -> None:
    """Tables for notes, their entities, tombstones, the audit trail and meta values."""
    for statement in _V1:
        db.execute(statement)
    db.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [(SPLIT_KEY, secrets.token_bytes(32)), (LAST_SEQ, 0), (ROUND_SEQ, 0)],
    )


MIGRATIONS: Sequence[Migration] = (_v1_initial,)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The file cannot serve as a note store (no WAL journaling, or a newer schema)."""


def open_database(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection to `path` (created if missing) with the store's pragmas, migrated to
    `SCHEMA_VERSION`; in autocommit mode, shareable between threads under the caller's lock."""
    db = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SchemaError(f"cannot use WAL journaling (got {mode!r})")
        for pragma in PRAGMAS:
            db.execute(pragma)
        _upgrade(db)
    except BaseException:
        db.close()
        raise
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring the schema to `SCHEMA_VERSION` in one write transaction; refuse a newer one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"its schema version {found} is newer than version {SCHEMA_VERSION}, the newest "
                "this code knows; upgrade the appliance"
            )
        if found < SCHEMA_VERSION:
            migrate(db, found)
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def migrate(db: sqlite3.Connection, found: int) -> None:
    """Run the migrations after version `found` (inside the caller's transaction)."""
    for version in range(found, SCHEMA_VERSION):
        MIGRATIONS[version](db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def meta_int(db: sqlite3.Connection, key: str) -> int:
    """An integer meta value."""
    return int(meta_value(db, key))


def meta_value(db: sqlite3.Connection, key: str) -> Any:
    """A meta value as stored."""
    return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]


def set_meta(db: sqlite3.Connection, key: str, value: object) -> None:
    """Set an existing meta value."""
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))


def next_seq(db: sqlite3.Connection) -> int:
    """Advance the store-wide change counter and return its new value."""
    seq = meta_int(db, LAST_SEQ) + 1
    set_meta(db, LAST_SEQ, seq)
    return seq


def note_state(db: sqlite3.Connection, note_id: str) -> tuple[int, str, int] | None:
    """``(revision, digest, seq)`` of the stored note, or None."""
    row = db.execute(
        "SELECT revision, digest, seq FROM notes WHERE note_id = ?", (note_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def is_deleted(db: sqlite3.Connection, note_id: str) -> bool:
    """Whether the note id has a tombstone."""
    return (
        db.execute("SELECT 1 FROM tombstones WHERE note_id = ?", (note_id,)).fetchone() is not None
    )


_UPSERT = (
    "INSERT INTO notes (note_id, revision, text, kind, annotator, model_version, digest, seq, "
    "submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (note_id) DO UPDATE SET "
    "revision = excluded.revision, text = excluded.text, kind = excluded.kind, "
    "annotator = excluded.annotator, model_version = excluded.model_version, "
    "digest = excluded.digest, seq = excluded.seq, submitted_at = excluded.submitted_at"
)


def write_note(
    db: sqlite3.Connection, row: Sequence[object], spans: Sequence[Sequence[object]]
) -> None:
    """Insert or replace a note row (columns in table order) and its ``(start, end, label,
    score)`` entity spans."""
    db.execute(_UPSERT, tuple(row))
    db.execute("DELETE FROM entities WHERE note_id = ?", (row[0],))
    db.executemany(
        "INSERT INTO entities (note_id, start_char, end_char, label, score) VALUES (?, ?, ?, ?, ?)",
        [(row[0], *span) for span in spans],
    )


def remove_note(
    db: sqlite3.Connection, note_id: str, at: str, actor: str, reason: str
) -> int | None:
    """Tombstone the note id (the first tombstone stays) and delete its row and entities;
    returns the removed revision, or None when no note was stored."""
    db.execute(
        "INSERT INTO tombstones (note_id, deleted_at, actor, reason) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (note_id) DO NOTHING",
        (note_id, at, actor, reason),
    )
    row = db.execute("DELETE FROM notes WHERE note_id = ? RETURNING revision", (note_id,))
    removed = row.fetchone()
    return None if removed is None else int(removed[0])


def add_audit(db: sqlite3.Connection, row: Sequence[object]) -> None:
    """Append ``(at, actor, action, note_id, revision, outcome)`` to the audit trail."""
    db.execute(
        "INSERT INTO audit (at, actor, action, note_id, revision, outcome) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        tuple(row),
    )


def audit_rows(db: sqlite3.Connection, limit: int) -> list[Any]:
    """The newest `limit` audit rows, newest first."""
    return db.execute(
        "SELECT at, actor, action, note_id, revision, outcome FROM audit ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()


def note_rows(db: sqlite3.Connection, kinds: Sequence[str]) -> list[Any]:
    """``(note_id, revision, text, kind, annotator, model_version, seq, submitted_at)`` of the
    notes of `kinds`, by note id."""
    marks = ", ".join("?" * len(kinds))
    return db.execute(
        "SELECT note_id, revision, text, kind, annotator, model_version, seq, submitted_at "
        f"FROM notes WHERE kind IN ({marks}) ORDER BY note_id",
        tuple(kinds),
    ).fetchall()


def entity_rows(db: sqlite3.Connection, kinds: Sequence[str]) -> list[Any]:
    """``(note_id, start, end, label, score)`` of the notes of `kinds`, by note and start."""
    marks = ", ".join("?" * len(kinds))
    return db.execute(
        "SELECT e.note_id, e.start_char, e.end_char, e.label, e.score FROM entities AS e "
        f"JOIN notes AS n ON n.note_id = e.note_id WHERE n.kind IN ({marks}) "
        "ORDER BY e.note_id, e.start_char",
        tuple(kinds),
    ).fetchall()


def _one(db: sqlite3.Connection, sql: str, *args: object) -> Any:
    return db.execute(sql, args).fetchone()[0]


def counts(db: sqlite3.Connection, since_seq: int) -> dict[str, Any]:
    """Notes per kind, entities per label, tombstones and notes changed after `since_seq`."""
    return {
        "by_kind": dict(db.execute("SELECT kind, COUNT(*) FROM notes GROUP BY kind")),
        "by_label": dict(
            db.execute("SELECT label, COUNT(*) FROM entities GROUP BY label ORDER BY label")
        ),
        "deletions": _one(db, "SELECT COUNT(*) FROM tombstones"),
        "changed": _one(db, "SELECT COUNT(*) FROM notes WHERE seq > ?", since_seq),
    }
