"""A durable on-box store of clinicians' annotated notes (their corrections of the NER output).

The store is one SQLite file (stdlib ``sqlite3``) and guarantees:

* Durability: every write is one transaction in WAL mode with ``synchronous=FULL``; a call returns
  only after its record is on disk, and a crash (even ``kill -9``) keeps every acknowledged write
  and no half-written one.
* One writer at a time: writes take ``BEGIN IMMEDIATE`` on one connection guarded by a lock, so a
  `NoteStore` may be shared by many threads; several processes may open the same file (SQLite's
  file locking orders them, waiting up to a busy timeout).
* Idempotent submits keyed by ``(note_id, revision)``: a retry is a ``duplicate`` and changes
  nothing, an older revision is ``stale`` and kept out, a newer one replaces the stored one, and
  the same revision with other content is a `RevisionConflict`.
* Final deletion: a deleted note's text and entities are removed with ``secure_delete`` on (freed
  space is overwritten) and the WAL is checkpointed; a tombstone refuses the note id forever.
* No note text in the audit trail, in `stats` or in any error message.
* Snapshots are consistent (one read transaction) and hold only training material: notes of kind
  ``corrected`` or ``accepted``. Their train / held-out split is a keyed hash of the note id, so a
  note never changes side across revisions.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance import note_store_schema as schema
from appliance.annotations import (
    DEFAULT_MAX_NOTE_CHARS,
    HELDOUT,
    KINDS,
    MAX_NAME,
    MAX_REASON,
    TRAINING_KINDS,
    Annotation,
    check_name,
    split_of,
    validate_annotation,
)
from appliance.notes import EntitySpan, Note

STORED, DUPLICATE, STALE = "stored", "duplicate", "stale"
BUSY_TIMEOUT_S = 30.0


class StoreError(Exception):
    """The store cannot do what was asked; the message names the database file."""


class RevisionConflict(StoreError):
    """A revision that is already stored was submitted again with different content."""


class NoteDeleted(StoreError):
    """The note id was deleted; it can never be submitted again."""


@dataclass(frozen=True)
class SubmitResult:
    """What a submit did; `revision` and `seq` are those of the row the store now holds."""

    outcome: str
    note_id: str
    revision: int
    seq: int


@dataclass(frozen=True)
class AuditEntry:
    """One audited action (never any note text)."""

    at: str
    actor: str
    action: str
    note_id: str
    revision: int | None
    outcome: str


@dataclass(frozen=True)
class StoredNote:
    """A note as the store holds it: its latest revision."""

    note_id: str
    revision: int
    text: str
    entities: tuple[EntitySpan, ...]
    kind: str
    annotator: str
    model_version: str
    seq: int
    submitted_at: str

    def to_note(self) -> Note:
        """The note as training data."""
        return Note(self.note_id, self.text, self.entities, None, f"note-store:{self.note_id}")


@dataclass(frozen=True)
class Snapshot:
    """The training notes at one moment; `seq` is the store's change counter at that moment."""

    notes: tuple[StoredNote, ...]
    seq: int
    round_seq: int = 0  # the seq the last marked round trained on, read with the notes

    def split(self, heldout_fraction: float, key: bytes) -> tuple[list[Note], list[Note]]:
        """``(train, heldout)`` notes, each note's side given by `split_of`."""
        train: list[Note] = []
        heldout: list[Note] = []
        for stored in self.notes:
            side = split_of(stored.note_id, key, heldout_fraction)
            (heldout if side == HELDOUT else train).append(stored.to_note())
        return train, heldout


@dataclass(frozen=True)
class StoreStats:
    """Counts only: no note text. `round_seq` is 0 until a round is marked."""

    notes: int
    by_kind: Mapping[str, int]
    entities_by_label: Mapping[str, int]
    deletions: int
    changed_since_round: int
    round_seq: int
    seq: int
    bytes_on_disk: int


def _digest(ann: Annotation) -> str:
    """A fingerprint of everything a revision says (to tell a retry from a conflict)."""
    spans = [[e.start, e.end, e.label, e.score] for e in ann.entities]
    content = [ann.text, spans, ann.kind, ann.annotator, ann.model_version]
    return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# ----------------------------------------------------------------------------- the store


class NoteStore:
    """The annotated-notes store in one SQLite file; safe to share between threads."""

    def __init__(
        self,
        path: Path,
        max_note_chars: int = DEFAULT_MAX_NOTE_CHARS,
        labels: Collection[str] | None = None,
    ) -> None:
        """Open (creating it and its directories if needed) and migrate the store at `path`.

        `labels`, when given, are the entity categories `submit` accepts.
        """
        if type(max_note_chars) is not int or max_note_chars < 1:
            raise ValueError(f"max_note_chars must be a positive integer, got {max_note_chars}")
        self.path = Path(path)
        self.max_note_chars = max_note_chars
        self.labels = frozenset(labels) if labels is not None else None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = self._open()
        try:
            with self._transaction("BEGIN") as db:
                self._key = bytes(schema.meta_value(db, schema.SPLIT_KEY))
        except BaseException:
            self.close()
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return schema.open_database(self.path, BUSY_TIMEOUT_S)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot create the note store: {err.strerror}") from err
        except (sqlite3.Error, schema.SchemaError) as err:
            raise StoreError(f"{self.path}: cannot open the note store: {err}") from err

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; sqlite3 errors surface as `StoreError`."""
        with self._lock:
            db = self._connection()
            try:
                db.execute(begin)
                try:
                    yield db
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: the note store is closed")
        return self._db

    def submit(
        self, ann: Annotation, actor: str, labels: Collection[str] | None = None
    ) -> SubmitResult:
        """Validate and store `ann`: outcome ``stored``, ``duplicate`` (a retry) or ``stale``.

        `labels`, when given, are the entity categories allowed for this call instead of the
        store's own. Raises `RevisionConflict` for a stored revision with other content and
        `NoteDeleted` for a deleted note id (both audited). The result carries the stored
        row's revision and seq.
        """
        allowed = self.labels if labels is None else labels
        ann = validate_annotation(ann, allowed, self.max_note_chars)
        check_name("actor", actor, MAX_NAME)
        with self._transaction("BEGIN IMMEDIATE") as db:
            result = self._submit_in(db, ann, actor)
        if isinstance(result, StoreError):
            raise result
        return result

    def _submit_in(
        self, db: sqlite3.Connection, ann: Annotation, actor: str
    ) -> SubmitResult | StoreError:
        note_id, revision = ann.note_id, ann.revision
        if schema.is_deleted(db, note_id):
            schema.add_audit(db, (_now(), actor, "submit", note_id, revision, "refused-deleted"))
            return NoteDeleted(f"{self.path}: note {note_id!r} was deleted and cannot return")
        digest = _digest(ann)
        state = schema.note_state(db, note_id)
        if state is None or revision > state[0]:
            result = SubmitResult(STORED, note_id, revision, _store(db, ann, digest))
        elif revision < state[0]:
            result = SubmitResult(STALE, note_id, state[0], state[2])
        elif digest == state[1]:
            result = SubmitResult(DUPLICATE, note_id, revision, state[2])
        else:
            schema.add_audit(db, (_now(), actor, "submit", note_id, revision, "conflict"))
            return RevisionConflict(
                f"{self.path}: note {note_id!r} revision {revision} is already stored "
                "with different content"
            )
        schema.add_audit(db, (_now(), actor, "submit", note_id, revision, result.outcome))
        return result

    def delete(self, note_id: str, actor: str, reason: str) -> bool:
        """Remove the note for good and tombstone its id; True when a stored note was removed.

        The id is refused by `submit` from then on; deleting again is harmless (and audited).
        The WAL is then checkpointed (best effort: a reader in another process may hold it back
        until the next checkpoint) so the overwritten text leaves the disk too.
        """
        check_name("note_id", note_id, MAX_NAME)
        check_name("actor", actor, MAX_NAME)
        check_name("reason", reason, MAX_REASON)
        with self._transaction("BEGIN IMMEDIATE") as db:
            removed = schema.remove_note(db, note_id, _now(), actor, reason)
            if removed is not None:
                schema.next_seq(db)
            outcome = "absent" if removed is None else "deleted"
            schema.add_audit(db, (_now(), actor, "delete", note_id, removed, outcome))
        with suppress(StoreError):
            self.checkpoint()
        return removed is not None

    def checkpoint(self) -> bool:
        """Move the WAL into the main file and truncate it; False when readers held it back."""
        with self._lock:
            try:
                busy = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err
        return int(busy) == 0

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""
        if type(limit) is not int or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit}")
        with self._transaction("BEGIN") as db:
            rows = schema.audit_rows(db, limit)
        return [AuditEntry(*row) for row in rows]

    def snapshot(self) -> Snapshot:
        """The training notes (kinds corrected and accepted) in one consistent read.

        The snapshot's seq is the store's change counter at that read (deletions count too);
        its round_seq, that of the last marked round, read in the same transaction.
        """
        with self._transaction("BEGIN") as db:
            seq = schema.meta_int(db, schema.LAST_SEQ)
            round_seq = schema.meta_int(db, schema.ROUND_SEQ)
            rows = schema.note_rows(db, TRAINING_KINDS)
            spans: dict[str, list[EntitySpan]] = {}
            for note_id, *span in schema.entity_rows(db, TRAINING_KINDS):
                spans.setdefault(note_id, []).append(EntitySpan(*span))
        notes = (StoredNote(r[0], r[1], r[2], tuple(spans.get(r[0], ())), *r[3:]) for r in rows)
        return Snapshot(tuple(notes), seq, round_seq)

    def split_key(self) -> bytes:
        """The store's random 32-byte key for `split_of` (made once, when the store was created)."""
        return self._key

    def mark_round(self, seq: int) -> None:
        """Record that the last training round used the notes up to change `seq`."""
        if type(seq) is not int or seq < 0:
            raise ValueError(f"seq must be a non-negative integer, got {seq}")
        with self._transaction("BEGIN IMMEDIATE") as db:
            last = schema.meta_int(db, schema.LAST_SEQ)
            if seq > last:
                raise ValueError(f"seq {seq} is beyond the store's last change {last}")
            schema.set_meta(db, schema.ROUND_SEQ, seq)

    def stats(self) -> StoreStats:
        """Counts of notes, kinds, entity labels (of all stored notes), deletions and changes
        since the last marked round, and the database's bytes on disk; never any text."""
        with self._transaction("BEGIN") as db:
            round_seq = schema.meta_int(db, schema.ROUND_SEQ)
            seq = schema.meta_int(db, schema.LAST_SEQ)
            found = schema.counts(db, round_seq)
        by_kind = {kind: found["by_kind"].get(kind, 0) for kind in KINDS}
        return StoreStats(
            notes=sum(by_kind.values()),
            by_kind=by_kind,
            entities_by_label=found["by_label"],
            deletions=found["deletions"],
            changed_since_round=found["changed"],
            round_seq=round_seq,
            seq=seq,
            bytes_on_disk=self._bytes_on_disk(),
        )

    def _bytes_on_disk(self) -> int:
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(file.stat().st_size for file in files if file.exists())

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> NoteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _store(db: sqlite3.Connection, ann: Annotation, digest: str) -> int:
    """Write `ann` as the note's stored revision; returns its new seq."""
    seq = schema.next_seq(db)
    row = (ann.note_id, ann.revision, ann.text, ann.kind, ann.annotator, ann.model_version)
    spans = [(e.start, e.end, e.label, e.score) for e in ann.entities]
    schema.write_note(db, (*row, digest, seq, _now()), spans)
    return seq
