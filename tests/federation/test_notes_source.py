"""A node fed by the box's note store: a snapshot split by a keyed hash, rounds sat out without
new notes, deleted notes gone from the next round and from the activation cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.annotations import Annotation
from appliance.note_store import NoteStore
from appliance.notes import Note
from federation.client_app import HospitalClient, hospital_node
from federation.journal import read_journal
from federation.notes_source import read_node_notes
from tests.federation.helpers import corpus, daemon_config, tiny_config


def _fill(store: Path, notes: list[Note], revision: int = 1) -> None:
    with NoteStore(store) as opened:
        for note in notes:
            opened.submit(Annotation.of_note(note, revision, "coder-1", "corrected"), "ehr")


def _client(tiny_llama: Path, tmp_path: Path, store: Path) -> HospitalClient:
    cfg = tiny_config(tiny_llama, local_epochs=1)
    node_config = {
        "hospital": "h",
        "note-store": str(store),
        "heldout-fraction": 0.25,
        "min-new-notes": 1,
        "state-dir": str(tmp_path / "state"),
        "journal": str(tmp_path / "journal.jsonl"),
    }
    return HospitalClient(cfg, node_config, lambda: hospital_node(cfg, node_config))


def _fit(client: HospitalClient, server_round: int) -> dict[str, object]:
    node = client.node
    parameters = [node.initial_arrays()[n] for n in node.names]
    _, _, metrics = client.fit(parameters, {"server-round": server_round})
    assert not hasattr(node, "loaded")  # freed: the next message reads the store anew
    return metrics


def test_the_split_is_by_note_id_and_survives_revisions(tmp_path: Path) -> None:
    # Prepare
    store, notes = tmp_path / "notes.sqlite", corpus(tmp_path / "c", 200, seed=5)
    _fill(store, notes)
    config = {"note-store": str(store), "heldout-fraction": 0.25}

    # Execute
    first = read_node_notes(config)
    _fill(store, notes, revision=2)  # every note revised
    second = read_node_notes(config)

    # Assert
    train, heldout = {n.note_id for n in first.train}, {n.note_id for n in first.heldout}
    assert not train & heldout and len(train | heldout) == 200
    assert 30 <= len(heldout) <= 70
    assert {n.note_id for n in second.heldout} == heldout
    assert second.seq is not None and first.seq is not None and second.seq > first.seq


def test_a_store_fed_node_trains_on_new_notes_and_sits_out_without_them(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # Prepare
    store, notes = tmp_path / "notes.sqlite", corpus(tmp_path / "c", 28, seed=6)
    client = _client(tiny_llama, tmp_path, store)
    empty = read_node_notes(client.node_config)

    # Execute: an empty store, then 20 notes, then nothing new, then a deletion and 8 new notes
    assert not empty.train
    parameters = [np.zeros(2, dtype=np.float32)]
    _, none_yet, declined_empty = client.fit(parameters, {"server-round": 1})
    _fill(store, notes[:20])
    trained = _fit(client, 2)
    cache = sorted((tmp_path / "state" / "activations").glob("*.safetensors"))
    nothing_new = _fit(client, 3)
    with NoteStore(store) as opened:
        gone = next(n.note_id for n in opened.snapshot().notes)
        opened.delete(gone, "privacy-officer", "consent withdrawn")
    _fill(store, notes[20:])
    again = _fit(client, 4)
    after = read_node_notes(client.node_config)

    # Assert
    assert none_yet == 0 and "holds no training notes" in str(declined_empty["declined"])
    assert "declined" not in trained and len(cache) == 1
    assert "min-new-notes is 1" in str(nothing_new["declined"])
    assert "declined" not in again
    assert gone not in {n.note_id for n in after.train + after.heldout}
    now = sorted((tmp_path / "state" / "activations").glob("*.safetensors"))
    assert len(now) == 1 and now != cache  # the round before's activations are gone
    events = [(e.event, e.fields["server_round"]) for e in read_journal(tmp_path / "journal.jsonl")]
    assert [r for e, r in events if e == "round_completed"] == [2, 4]
    assert [r for e, r in events if e == "round_declined"] == [1, 3]


def test_the_daemon_passes_a_note_store_to_the_node(tmp_path: Path) -> None:
    # Prepare
    store = tmp_path / "notes.sqlite"

    # Execute
    cfg = daemon_config(tmp_path, notes=None, heldout=None, note_store=store, min_new_notes=50)

    # Assert
    values = cfg.node_values()
    assert values["note-store"] == str(store) and values["min-new-notes"] == 50
    assert "notes" not in values and "heldout" not in values
    assert f'note-store="{store}"' in cfg.node_config_arg()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"notes": None, "heldout": None}, "set note_store, or notes and heldout"),
        ({"heldout": None}, "set note_store, or notes and heldout"),
        ({"note_store": Path("n.sqlite")}, "set one source of notes, not both"),
        (
            {"notes": None, "heldout": None, "note_store": Path("n"), "heldout_fraction": 1.0},
            r"heldout_fraction 1.0: must be within \(0, 1\)",
        ),
    ],
)
def test_the_daemon_needs_one_source_of_notes(
    tmp_path: Path, fields: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        daemon_config(tmp_path, **fields)
