"""The annotated-notes store: idempotent submits, durability under kill -9, final deletion,
boundary validation, the keyed train / held-out split, schema versions and the counts."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.annotations import Annotation, AnnotationError, split_of, validate_annotation
from appliance.note_store import (
    NoteDeleted,
    NoteStore,
    RevisionConflict,
    StoreError,
    SubmitResult,
)
from appliance.notes import EntitySpan

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"Chemical", "Disease"}
SECRET = "Zyxwvut"  # a word of "confidential" note text that must never reach a message
TEXT = f"Aspirin caused gastric ulcers in {SECRET}."
ENTITIES = (EntitySpan(0, 7, "Chemical"), EntitySpan(15, 29, "Disease"))


def make(
    note_id: str = "n1",
    revision: int = 1,
    text: str = TEXT,
    entities: tuple[EntitySpan, ...] = ENTITIES,
    kind: str = "corrected",
) -> Annotation:
    return Annotation(note_id, revision, text, entities, "dr-a", kind, "model-7")


def db_bytes(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NoteStore]:
    with NoteStore(tmp_path / "state" / "notes.db", labels=LABELS) as opened:
        yield opened


# ----------------------------------------------------------------------------- submit outcomes


def test_submit_outcomes_duplicate_stale_supersede(store: NoteStore):
    # Prepare
    first = make()
    second = make(revision=2, text="Ibuprofen caused gastric ulcers.", entities=())

    # Execute
    results = [
        store.submit(first, "dr-a"),
        store.submit(first, "dr-a"),
        store.submit(second, "dr-a"),
        store.submit(second, "dr-a"),
        store.submit(first, "dr-a"),
    ]

    # Assert
    assert results == [
        SubmitResult("stored", "n1", 1, 1),
        SubmitResult("duplicate", "n1", 1, 1),
        SubmitResult("stored", "n1", 2, 2),
        SubmitResult("duplicate", "n1", 2, 2),
        SubmitResult("stale", "n1", 2, 2),
    ]
    (note,) = store.snapshot().notes
    assert (note.revision, note.text, note.entities, note.seq) == (2, second.text, (), 2)
    assert [e.outcome for e in store.audit()] == [
        "stale",
        "duplicate",
        "stored",
        "duplicate",
        "stored",
    ]


def test_a_retry_never_duplicates(store: NoteStore):
    # Prepare
    ann = make(entities=tuple(reversed(ENTITIES)))  # order of entities does not matter

    # Execute
    outcomes = [store.submit(ann, "dr-a").outcome for _ in range(5)]
    outcomes.append(store.submit(make(), "dr-a").outcome)

    # Assert
    assert outcomes == ["stored"] + ["duplicate"] * 5
    stats = store.stats()
    assert (stats.notes, stats.seq, stats.entities_by_label) == (
        1,
        1,
        {"Chemical": 1, "Disease": 1},
    )


def test_the_same_revision_with_other_content_is_a_conflict(store: NoteStore):
    # Prepare
    store.submit(make(), "dr-a")

    # Execute / Assert
    with pytest.raises(RevisionConflict, match=r"note 'n1' revision 1 .*different content"):
        store.submit(make(kind="accepted"), "dr-a")
    with pytest.raises(RevisionConflict) as raised:
        store.submit(make(entities=ENTITIES[:1]), "dr-b")
    assert SECRET not in str(raised.value)
    assert store.snapshot().notes[0].kind == "corrected"
    assert [e.outcome for e in store.audit(limit=2)] == ["conflict", "conflict"]


def test_a_newer_revision_overwrites_the_old_text_on_disk(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    with NoteStore(path) as store:
        store.submit(make(), "dr-a")

        # Execute
        store.submit(make(revision=2, text="Later, no ulcers.", entities=()), "dr-a")
        assert store.checkpoint()

        # Assert
        assert SECRET.encode() not in db_bytes(path)


def test_threads_submitting_with_retries_store_each_note_once(store: NoteStore):
    # Prepare
    start = threading.Barrier(100)

    def annotate(i: int) -> list[SubmitResult]:
        first = make(f"t{i:03d}", 1, f"Note {i}: aspirin helped.", ())
        start.wait()
        results = [store.submit(first, f"dr-{i}") for _ in range(2 + i % 2)]
        if i % 4 == 0:
            later = make(f"t{i:03d}", 2, f"Note {i}: aspirin hurt.", ())
            results += [store.submit(later, f"dr-{i}") for _ in range(2)]
            results.append(store.submit(first, f"dr-{i}"))
        return results

    # Execute
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = [r for batch in pool.map(annotate, range(100)) for r in batch]

    # Assert
    outcomes = Counter(r.outcome for r in results)
    retries = sum(1 + i % 2 for i in range(100)) + 25
    assert outcomes == {"stored": 125, "duplicate": retries, "stale": 25}
    assert sorted(r.seq for r in results if r.outcome == "stored") == list(range(1, 126))
    revisions = {n.note_id: n.revision for n in store.snapshot().notes}
    assert revisions == {f"t{i:03d}": 2 if i % 4 == 0 else 1 for i in range(100)}
    assert store.stats().notes == 100
    assert len(store.audit(limit=1000)) == len(results)


def test_two_stores_on_one_file_share_it(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    with NoteStore(path) as one, NoteStore(path) as two:
        # Execute
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(lambda i: (one, two)[i % 2].submit(make(f"p{i % 10}"), "dr-a"), range(40))
            )

        # Assert
        assert one.split_key() == two.split_key()
        assert two.stats().notes == 10 and one.stats().seq == 10


# ----------------------------------------------------------------------------- kill -9

WRITER = """
import sys
from pathlib import Path
from appliance.annotations import Annotation
from appliance.note_store import NoteStore

store = NoteStore(Path(sys.argv[1]))
i = 0
while True:
    note_id, revision = f"k{i % 40}", i // 40 + 1
    store.submit(Annotation(note_id, revision, f"note {i}", (), "dr-a", "accepted"), "dr-a")
    print(note_id, revision, flush=True)
    i += 1
"""


def test_every_acknowledged_submit_survives_kill_9(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert writer.stdout is not None
    acknowledged: dict[str, int] = {}

    # Execute
    try:
        for _ in range(150):
            line = writer.stdout.readline()
            assert line, "the writer died before acknowledging enough submits"
            note_id, acked = line.split()
            acknowledged[note_id] = int(acked)
    finally:
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        writer.stdout.close()

    # Assert
    with NoteStore(path) as store:
        stored = {n.note_id: n.revision for n in store.snapshot().notes}
    for note_id, revision in acknowledged.items():
        assert revision <= stored[note_id] <= revision + 1
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ----------------------------------------------------------------------------- deletion


def test_a_deleted_note_is_gone_for_good(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    store = NoteStore(path)
    store.submit(make("keep", text="Aspirin caused gastric ulcers in Smith."), "dr-a")
    store.submit(make("gone"), "dr-a")
    assert SECRET.encode() in db_bytes(path)

    # Execute
    removed = store.delete("gone", "privacy-officer", "patient withdrew consent")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # Assert
    assert removed is True
    assert [n.note_id for n in store.snapshot().notes] == ["keep"]
    stats = store.stats()
    assert (stats.notes, stats.deletions) == (1, 1)
    assert stats.entities_by_label == {"Chemical": 1, "Disease": 1}
    with pytest.raises(NoteDeleted, match="note 'gone' was deleted"):
        store.submit(make("gone", revision=9), "dr-a")
    assert SECRET.encode() not in db_bytes(path)
    assert b"Smith" in db_bytes(path)
    entry = store.audit(limit=2)[1]
    assert (entry.action, entry.note_id, entry.revision, entry.outcome) == (
        "delete",
        "gone",
        1,
        "deleted",
    )
    assert entry.actor == "privacy-officer"
    assert all(SECRET not in str(e) for e in store.audit())
    store.close()


def test_deleting_an_absent_note_still_refuses_it_later(store: NoteStore):
    # Execute
    first = store.delete("never", "officer", "mistaken upload")
    second = store.delete("never", "officer", "again")

    # Assert
    assert (first, second) == (False, False)
    with pytest.raises(NoteDeleted, match="'never'"):
        store.submit(make("never"), "dr-a")
    assert [e.outcome for e in store.audit()] == ["refused-deleted", "absent", "absent"]
    assert store.stats().deletions == 1


# ----------------------------------------------------------------------------- validation

VALIDATION_CASES = [
    ("note_id", {"note_id": ""}),
    ("note_id", {"note_id": "   "}),
    ("note_id", {"note_id": "n\x07"}),
    ("note_id", {"note_id": "n\n1"}),
    ("note_id", {"note_id": "n\u200b1"}),
    ("note_id", {"note_id": "n" * 129}),
    ("note_id", {"note_id": 7}),
    ("revision", {"revision": 0}),
    ("revision", {"revision": True}),
    ("revision", {"revision": "2"}),
    ("revision", {"revision": 2**63}),
    ("text", {"text": "", "entities": ()}),
    ("text", {"text": TEXT + "\x00"}),
    ("text", {"text": TEXT + "x" * 100}),
    ("text", {"text": TEXT + "\ud800"}),
    ("annotator", {"annotator": ""}),
    ("annotator", {"annotator": "dr\x1b[31m"}),
    ("kind", {"kind": "maybe"}),
    ("model_version", {"model_version": "m" * 129}),
    ("entities", {"entities": "Chemical 0 7"}),
    ("entities[1]", {"entities": [ENTITIES[0], "Disease"]}),
    ("entities[1]", {"entities": (ENTITIES[0], (15, 29, "Disease"))}),
    ("entities[2]", {"entities": (*ENTITIES, EntitySpan(2, 5, "Chemical"))}),
    ("entities[0]", {"entities": (EntitySpan(30, 500, "Disease"),)}),
    ("entities[0]", {"entities": (EntitySpan(-1, 7, "Chemical"),)}),
    ("entities[0]", {"entities": (EntitySpan(7, 7, "Chemical"),)}),
    ("entities[0]", {"entities": (EntitySpan(0, 8, "Chemical"),)}),
    ("entities[1]", {"entities": (ENTITIES[0], EntitySpan(15, 29, "Gene"))}),
    ("entities[0].label", {"entities": (EntitySpan(0, 7, ""),)}),
    ("entities[0].score", {"entities": (EntitySpan(0, 7, "Chemical", float("nan")),)}),
]


@pytest.mark.parametrize(("field", "change"), VALIDATION_CASES)
def test_validation_names_the_field(field: str, change: dict[str, Any]):
    # Prepare
    bad = replace(make(), **change)

    # Execute
    with pytest.raises(AnnotationError, match=f"^{re.escape(field)}: ") as raised:
        validate_annotation(bad, LABELS, max_note_chars=len(TEXT) + 10)

    # Assert
    assert raised.value.field == field
    assert SECRET not in str(raised.value)


def test_submit_validates_with_the_store_labels_and_size(tmp_path: Path):
    # Prepare
    with NoteStore(tmp_path / "notes.db", max_note_chars=20, labels={"Chemical"}) as store:
        # Execute / Assert
        with pytest.raises(AnnotationError, match=r"^text: has \d+ code points \(at most 20\)"):
            store.submit(make(), "dr-a")
        ulcers = make(text="Aspirin and ulcers", entities=(EntitySpan(12, 18, "Disease"),))
        with pytest.raises(AnnotationError, match="unknown label 'Disease'") as raised:
            store.submit(ulcers, "dr-a")
        assert raised.value.field == "entities[0]"
        with pytest.raises(AnnotationError, match="^actor: "):
            store.submit(make(text="Aspirin", entities=()), "")
        assert store.stats().notes == 0


def test_emoji_and_cjk_text_with_code_point_offsets(store: NoteStore):
    # Prepare
    text = "😷 患者は アスピリン を服用し 胃潰瘍 を発症 🤒"
    chemical, disease = text.index("アスピリン"), text.index("胃潰瘍")
    entities = (
        EntitySpan(disease, disease + 3, "Disease"),
        EntitySpan(chemical, chemical + 5, "Chemical"),
    )

    # Execute
    store.submit(make("jp-1", text=text, entities=entities), "dr-a")

    # Assert
    (note,) = store.snapshot().notes
    assert note.text == text
    assert [note.text[e.start : e.end] for e in note.entities] == ["アスピリン", "胃潰瘍"]
    assert note.to_note().entities == note.entities


# ----------------------------------------------------------------------------- the split


def test_the_split_is_keyed_deterministic_and_near_the_fraction(store: NoteStore):
    # Prepare
    key = store.split_key()
    ids = [f"note-{i}" for i in range(2000)]

    # Execute
    sides = [split_of(i, key, 0.2) for i in ids]
    again = [split_of(i, key, 0.2) for i in ids]
    other = [split_of(i, os.urandom(32), 0.2) for i in ids]

    # Assert
    assert len(key) == 32 and sides == again
    assert set(sides) == {"train", "heldout"}
    assert 0.17 <= sides.count("heldout") / len(ids) <= 0.23
    assert sum(a != b for a, b in zip(sides, other, strict=True)) > 200
    assert {split_of(i, key, 0.0) for i in ids[:50]} == {"train"}
    assert {split_of(i, key, 1.0) for i in ids[:50]} == {"heldout"}
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_of("n1", key, 1.5)


def test_a_note_keeps_its_side_across_revisions(store: NoteStore):
    # Prepare
    key = store.split_key()
    for i in range(40):
        store.submit(make(f"s{i}", entities=()), "dr-a")
    train, heldout = store.snapshot().split(0.3, key)

    # Execute
    for i in range(40):
        store.submit(make(f"s{i}", revision=2, text=f"Revised note {i}.", entities=()), "dr-a")
    train2, heldout2 = store.snapshot().split(0.3, key)

    # Assert
    assert train and heldout
    assert [n.note_id for n in train] == [n.note_id for n in train2]
    assert [n.note_id for n in heldout] == [n.note_id for n in heldout2]
    assert all(split_of(n.note_id, key, 0.3) == "heldout" for n in heldout2)
    assert {n.text for n in train2 + heldout2} == {f"Revised note {i}." for i in range(40)}


# ----------------------------------------------------------------------------- schema and files


def test_reopening_keeps_the_data_and_the_key(tmp_path: Path):
    # Prepare
    path = tmp_path / "deep" / "dir" / "notes.db"
    with NoteStore(path) as store:
        store.submit(make(), "dr-a")
        key = store.split_key()

    # Execute
    with NoteStore(path) as reopened:
        # Assert
        assert reopened.split_key() == key
        assert [n.note_id for n in reopened.snapshot().notes] == ["n1"]
        assert reopened.submit(make(), "dr-a").outcome == "duplicate"
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_newer_schema_is_refused(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    NoteStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 2")

    # Execute / Assert
    with pytest.raises(
        StoreError, match=rf"^{re.escape(str(path))}: .*schema version 2 .*version 1"
    ):
        NoteStore(path)


def test_a_corrupt_file_is_a_store_error(tmp_path: Path):
    # Prepare
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database at all\n" * 200)

    # Execute / Assert
    with pytest.raises(StoreError, match=re.escape(str(path))):
        NoteStore(path)


def test_a_closed_store_refuses_calls(tmp_path: Path):
    # Prepare
    store = NoteStore(tmp_path / "notes.db")

    # Execute
    store.close()
    store.close()

    # Assert
    with pytest.raises(StoreError, match="closed"):
        store.snapshot()


# ----------------------------------------------------------------------------- counts


def test_stats_and_changes_since_the_last_round(store: NoteStore):
    # Prepare
    store.submit(make("c1"), "dr-a")
    store.submit(make("a1", kind="accepted", entities=ENTITIES[:1]), "dr-a")
    store.submit(make("r1", kind="rejected"), "dr-a")
    snap = store.snapshot()

    # Execute
    before = store.stats()
    store.mark_round(snap.seq)
    marked = store.stats()
    store.submit(make("c2", entities=()), "dr-a")
    store.submit(make("a1", revision=2, kind="accepted", entities=()), "dr-a")
    store.delete("c1", "officer", "withdrawn")
    after = store.stats()

    # Assert
    assert [n.note_id for n in snap.notes] == ["a1", "c1"] and snap.seq == 3
    assert before.by_kind == {"corrected": 1, "accepted": 1, "rejected": 1}
    assert before.entities_by_label == {"Chemical": 3, "Disease": 2}
    assert (before.notes, before.changed_since_round, before.round_seq) == (3, 3, 0)
    assert (marked.changed_since_round, marked.round_seq) == (0, 3)
    assert after.by_kind == {"corrected": 1, "accepted": 1, "rejected": 1}
    assert (after.notes, after.deletions, after.changed_since_round, after.seq) == (3, 1, 2, 6)
    assert after.entities_by_label == {"Chemical": 1, "Disease": 1}
    assert after.bytes_on_disk >= store.path.stat().st_size > 0
    with pytest.raises(ValueError, match="beyond the store's last change 6"):
        store.mark_round(7)
