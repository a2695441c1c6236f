"""A simulated EHR at each box of the demo: it shows clinicians the served model's entities for
the box's own new notes and sends back what they would, through the box's curation API.

Each time the box's serving has swapped in a new model version, the EHR takes its next batch of
unseen notes (BC5CDR training sentences no box trains on yet), asks serving for their entities,
and submits each note with its gold entities: as a correction where the model missed or
misplaced one, as an acceptance where it found exactly the gold ones. The next round's snapshot
of the box's note store holds them. Gold entities stand in for the clinician; nothing else is
simulated: the calls are the real gRPC API into the real store.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from appliance.annotations import Annotation
from appliance.note_store import NoteStore
from appliance.notes import Note
from demo.progress import say
from serving.client import NerClient

POLL_S = 1.0


class SimulatedEhr(threading.Thread):
    """One box's EHR: a batch of notes per served version, until its notes run out or `stop`."""

    def __init__(
        self,
        box: str,
        target: str,
        notes: Sequence[Note],
        batch: int,
        served: Callable[[], str | None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"ehr-{box}", daemon=True)
        self.box, self.target, self.notes, self.batch = box, target, list(notes), batch
        self.served, self.stop = served, stop
        self.counts: Counter[str] = Counter()  # corrected / accepted / failed submissions
        self.by_version: dict[str, Counter[str]] = {}
        self._shown: set[str] = set()

    def run(self) -> None:
        sent = 0
        while sent < len(self.notes) and not self.stop.wait(POLL_S):
            version = self.served()
            if version is None or version in self._shown:
                continue
            self._shown.add(version)
            batch = self.notes[sent : sent + self.batch]
            sent += len(batch)
            counts = self._send(batch, version)
            self.by_version[version] = counts
            self.counts.update(counts)
            say(
                f"{self.box} EHR: clinicians checked {len(batch)} new notes shown by {version}: "
                f"{counts['corrected']} corrected, {counts['accepted']} accepted as shown"
                + (f", {counts['failed']} not stored" if counts["failed"] else "")
            )

    def _send(self, batch: Sequence[Note], version: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        try:
            with NerClient(self.target, timeout=60) as client:
                for note in batch:
                    counts[self._one(client, note, version)] += 1
        except grpc.RpcError as err:
            counts["failed"] += len(batch) - sum(counts.values())
            say(f"{self.box} EHR: serving did not answer ({err.code().name})")
        return counts

    def _one(self, client: NerClient, note: Note, version: str) -> str:
        shown = client.analyze(note.text, note_id=note.note_id)
        found = {(int(e.begin), int(e.end), e.category) for e in shown.entities}
        gold = [(e.start, e.end, e.label) for e in note.entities]
        kind = "accepted" if found == set(gold) else "corrected"
        try:
            client.submit_annotation(
                note.note_id, 1, note.text, gold, f"{self.box}-clinician", kind, version
            )
        except grpc.RpcError as err:
            say(f"{self.box} EHR: note {note.note_id} refused: {err.code().name}")
            return "failed"
        return kind


def import_notes(store: Path, notes: Sequence[Note]) -> None:
    """A box's annotated notes into its note store, as `appliance notes import` does."""
    with NoteStore(store) as opened:
        for note in notes:
            opened.submit(Annotation.of_note(note, 1, "import", "corrected"), "import")


def collected(
    stores: Sequence[tuple[str, Path, int]], ehrs: Sequence[SimulatedEhr]
) -> dict[str, dict[str, int]]:
    """Per box (name, store, notes imported at the start): what its EHR sent back and what its
    note store holds now; printed too."""
    say("notes the EHRs sent back, and each box's note store:")
    out = {}
    for (name, path, imported), ehr in zip(stores, ehrs, strict=True):
        with NoteStore(path) as store:
            stats = store.stats()
        out[name] = {"imported": imported, **dict(ehr.counts), "in_store": stats.notes}
        say(
            f"  {name}: {ehr.counts['corrected']} corrected, {ehr.counts['accepted']} accepted, "
            f"{ehr.counts['failed']} not stored; {imported} imported + "
            f"{stats.notes - imported} from its EHR = {stats.notes} notes in its store"
        )
    return out
