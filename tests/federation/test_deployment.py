"""The real deployment engine: flower-superlink + one flower-supernode per hospital, on
localhost, TLS on the Fleet API and SuperNode authentication on.

Slow (minutes): each ClientApp message starts a process that imports torch.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from appliance.annotations import Annotation
from appliance.note_store import NoteStore
from appliance.readers import read_notes
from appliance.registry import ModelRegistry
from demo.consortium import Consortium
from federation.deploy import make_certificates
from federation.journal import read_journal
from tests.appliance.corpus import write_jsonl
from tests.federation.helpers import tiny_config

CANARY = "Zebulon Quartermaine CANARY-7f3a"
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]


def _node_config(root: Path, hospital: str, seed: int) -> dict[str, object]:
    """Notes from files; hospital-b's from its note store (the same notes, imported)."""
    notes = write_jsonl(root / f"{hospital}.jsonl", 60, seed=seed)
    with notes.open("a", encoding="utf-8") as handle:
        record = {"id": "canary", "text": f"{CANARY} was given aspirin .", "entities": []}
        handle.write(json.dumps(record) + "\n")
    heldout = write_jsonl(root / f"{hospital}-heldout.jsonl", 20, seed=seed + 50)
    state = root / hospital
    sources: dict[str, object] = {"notes": str(notes), "heldout": str(heldout)}
    if hospital == "hospital-b":
        store = state / "notes.sqlite"
        with NoteStore(store) as opened:  # the two files number their notes alike
            for prefix, path in (("n", notes), ("h", heldout)):
                for note in read_notes(path).notes:
                    note_id = f"{prefix}-{note.note_id}"
                    annotation = Annotation(note_id, 1, note.text, note.entities, "c", "corrected")
                    opened.submit(annotation, "import")
        sources = {"note-store": str(store), "heldout-fraction": 0.25, "min-new-notes": 0}
    return {
        "hospital": hospital,
        **sources,
        "state-dir": str(state),
        "registry": str(state / "registry"),
        "journal": str(state / "journal.jsonl"),
        "audit-dir": str(state / "audit"),
        "source": str(notes),
    }


def _start(root: Path, hospitals: list[str]) -> tuple[Consortium, dict[str, dict]]:
    certs = make_certificates(root / "certs", hospitals)
    assert oct((root / "certs" / "superlink.key").stat().st_mode & 0o777) == "0o600"
    consortium = Consortium(root / "work", certs)
    consortium.start_superlink()
    configs = {}
    for seed, hospital in enumerate(hospitals, start=1):
        consortium.register(hospital)
        configs[hospital] = _node_config(root, hospital, seed)
        consortium.start_supernode(hospital, configs[hospital])
    return consortium, configs


def _events(configs: dict, hospital: str, event: str) -> list[int]:
    path = Path(str(configs[hospital]["journal"]))
    return [int(e.fields.get("server_round", 0)) for e in read_journal(path) if e.event == event]


def _kill_then_restart(consortium: Consortium, configs: dict, victim: str, stop: threading.Event):
    """Kill `victim` once it starts round 1; restart it when the others finished round 1."""
    while not stop.is_set() and 1 not in _events(configs, victim, "round_started"):
        time.sleep(0.5)
    proc = consortium.processes.get(victim)
    if proc is None or stop.is_set():
        return
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while not stop.is_set() and 1 not in _events(configs, "hospital-a", "promotion"):
        time.sleep(0.5)
    if not stop.is_set():
        consortium.start_supernode(victim, configs[victim])


@pytest.mark.timeout(1200)
def test_consortium_rounds_survive_a_dead_node_and_send_only_tensors(
    tiny_llama: Path, tmp_path: Path
):
    consortium, configs = _start(tmp_path, HOSPITALS)
    stop = threading.Event()
    chaos = threading.Thread(
        target=_kill_then_restart, args=(consortium, configs, "hospital-c", stop)
    )
    chaos.start()
    try:
        cfg = tiny_config(tiny_llama, rounds=3, min_nodes=2, round_timeout_s=45.0)
        done = consortium.run(cfg, timeout=1000)
    finally:
        stop.set()
        chaos.join()
        consortium.stop()
    assert done.ok, done.tail
    # every round completed by at least min_nodes boxes (while hospital-c is away, the server
    # may sample two of the three once it is back, so a given box may sit one round out)
    completed = {h: _events(configs, h, "round_completed") for h in HOSPITALS}
    for server_round in (1, 2, 3):
        assert sum(server_round in rounds for rounds in completed.values()) >= 2, completed
    rejoined = _events(configs, "hospital-c", "round_completed")
    assert rejoined and min(rejoined) >= 2, rejoined  # killed in round 1, back for later ones
    registry = ModelRegistry(Path(str(configs["hospital-a"]["registry"])))
    assert registry.current() is not None and len(registry.versions()) == 3
    _audit(configs)


def _audit(configs: dict) -> None:
    """Every reply holds only numeric tensors and scalar values; no note text, no canary, from
    files or from a note store."""
    note_texts = [CANARY, "CANARY-7f3a"]
    for hospital, config in configs.items():
        for line in Path(str(config["source"])).read_text().splitlines()[:5]:
            note_texts.append(json.loads(line)["text"])
        audit = Path(str(config["audit-dir"]))
        summaries = sorted(audit.glob("*.json"))
        assert summaries, f"{hospital} recorded no replies"
        for summary_path in summaries:
            summary = json.loads(summary_path.read_text())
            for record in summary["arrays"].values():
                assert all(
                    dtype in {"float32", "float16", "int8", "int32", "uint16"}
                    for dtype, _ in record.values()
                ), record
            for group in ("metrics", "configs"):
                for record in summary[group].values():
                    assert all(isinstance(v, int | float | str) for v in record.values())
            wire = summary_path.with_suffix(".bin").read_bytes()
            for text in note_texts:
                assert text.encode() not in wire, f"note text left {hospital}"


@pytest.mark.timeout(1200)
def test_secagg_gives_the_plain_fedavg_aggregate(tiny_llama: Path, tmp_path: Path):
    consortium, configs = _start(tmp_path, HOSPITALS)
    secagg = {"secagg": True, "secagg_shares": 3, "secagg_threshold": 2}
    try:
        plain = consortium.run(tiny_config(tiny_llama, rounds=1, min_nodes=3), timeout=600)
        secure = consortium.run(tiny_config(tiny_llama, rounds=1, min_nodes=3, **secagg), 600)
    finally:
        consortium.stop()
    assert plain.ok, plain.tail
    assert secure.ok, secure.tail
    versions = ModelRegistry(Path(str(configs["hospital-a"]["registry"]))).versions()
    assert len(versions) == 2
    root = Path(str(configs["hospital-a"]["registry"])) / "versions"
    a = load_file(str(root / versions[0] / "weights.safetensors"))
    b = load_file(str(root / versions[1] / "weights.safetensors"))
    assert a.keys() == b.keys()
    # SecAgg+ quantizes each weighted value into 2^22 steps over [-8, 8]: ~4e-6 per step.
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, worst
    moved = max(float(np.abs(a[k]).max()) for k in a if k.startswith("score."))
    assert moved > 0
