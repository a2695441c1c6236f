"""Where a node's notes come from: the box's note store, or annotated files.

With a note store (`note-store` in the node config), each message of a round reads one
consistent snapshot of it: the notes of kind corrected or accepted, split into train and
held-out sides by a keyed hash of the note id (`heldout-fraction`), so a held-out note never
trains and stays held out as revisions arrive; deleted notes are not in it. A round trains only
when at least `min-new-notes` training notes are new or changed since the box's last completed
round (`NodeNotes.changed`), and a completed round marks the snapshot it trained on
(`mark_trained`) and removes the activation-cache files the round did not use, so the
activations of a deleted note leave the disk with the next round.

With files (`notes`, `heldout`), the same notes every night, as IT prepared them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.note_store import NoteStore
from appliance.notes import Note
from appliance.readers import read_notes

DEFAULT_HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class NodeNotes:
    """A node's notes for one message: training and held-out sides, and with a store the
    snapshot's change counter and how many training notes are new since the last round."""

    train: list[Note]
    heldout: list[Note]
    seq: int | None = None
    changed: int | None = None


def read_node_notes(node_config: Mapping[str, Any]) -> NodeNotes:
    """The node's notes, from its note store's snapshot or from its files."""
    store = node_config.get("note-store")
    if store:
        fraction = float(node_config.get("heldout-fraction", DEFAULT_HELDOUT_FRACTION))
        with NoteStore(Path(str(store))) as notes:
            snapshot = notes.snapshot()
            train, heldout = snapshot.split(fraction, notes.split_key())
        training = {note.note_id for note in train}
        changed = sum(
            1 for n in snapshot.notes if n.seq > snapshot.round_seq and n.note_id in training
        )
        return NodeNotes(train, heldout, snapshot.seq, changed)
    train = read_notes(str(node_config["notes"])).notes
    path = node_config.get("heldout")
    return NodeNotes(train, read_notes(str(path)).notes if path else [])


def too_few_new(node_config: Mapping[str, Any], notes: NodeNotes) -> str | None:
    """Why the node sits this round out, or None when it has enough new training notes."""
    if notes.changed is None:
        return None
    least = int(node_config.get("min-new-notes", 1))
    if not notes.train:
        return "the note store holds no training notes yet"
    if notes.changed < least:
        return (
            f"{notes.changed} training notes new or changed since the last round; "
            f"min-new-notes is {least}"
        )
    return None


def mark_trained(
    node_config: Mapping[str, Any], notes: NodeNotes, state_dir: Path, started: float
) -> None:
    """After a completed round: remember the snapshot it trained on, and remove the activation
    cache files the round did not read or write (those of notes since deleted among them)."""
    store = node_config.get("note-store")
    if not store or notes.seq is None:
        return
    with NoteStore(Path(str(store))) as opened:
        opened.mark_round(notes.seq)
    for path in (state_dir / "activations").glob("*.safetensors"):
        if path.stat().st_mtime < started:
            path.unlink(missing_ok=True)
