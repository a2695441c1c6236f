"""The federation's side of benchmarks/scale.py: a hospital's local training in each mode, and one
real round (a TLS SuperLink and two SuperNodes on localhost, as deployed) at a base's size.

    .venv/bin/python -m benchmarks.scale_federation train --base DIR --mode lora \\
        --quantization nf4 --notes 32 --state-dir DIR

`train` loads a hospital's node the way the ClientApp does (`HospitalNode.load`: the frozen part
quantized as asked, LoRA adapters or the selected layers trainable) and trains one local epoch on
the first --notes BC5CDR training sentences; it prints one JSON line (tokens/s, seconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.readers import read_notes  # noqa: E402
from appliance.writers import write_conll  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from benchmarks.tree_memory import TreePeak  # noqa: E402
from demo.consortium import Consortium  # noqa: E402
from demo.federated import one_core_each  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.deploy import make_certificates  # noqa: E402
from federation.journal import JournalEntry, read_journal  # noqa: E402

TRAIN = ROOT / "data" / "bc5cdr" / "train.tsv"
DEVEL = ROOT / "data" / "bc5cdr" / "devel.tsv"
HOSPITALS = ("hospital-a", "hospital-b")
NODE_NICE = 10


# What every measured round shares: one round, causal attention, both nodes needed.
ROUND: dict[str, Any] = {
    "attention": "causal",
    "rounds": 1,
    "min_nodes": len(HOSPITALS),
    "round_timeout_s": 3600.0,
}


def run_config(
    base: str, mode: str, compression: str, quantization: str, optimizer: str = "adamw"
) -> FederationConfig:
    """One round of `top:8` in `mode`, both nodes needed, the frozen part as asked."""
    return plain_config(base=base, mode=mode, compression=compression,
                        frozen_quantization=quantization, optimizer=optimizer, **ROUND)  # fmt: skip


def default_config(base: str, micro_batch_size: int = 0) -> FederationConfig:
    """One round of the federation's defaults (DP-SGD on LoRA r16 of `top:8`, Poisson batches of
    256), both nodes needed, the frozen part as `auto` loads it; `micro_batch_size` 0: auto."""
    return FederationConfig(base=base, micro_batch_size=micro_batch_size, **ROUND)


def local_training(args: argparse.Namespace) -> dict[str, Any]:
    """One local epoch of a hospital's node, as the ClientApp trains it."""
    from federation.task import HospitalNode

    cfg = run_config(args.base, args.mode, "none", args.quantization)
    notes = read_notes(str(TRAIN)).notes[: args.notes]
    started = time.monotonic()
    node = HospitalNode.load(cfg, notes, args.state_dir / "node", "scale", (), args.state_dir)
    loaded_s = time.monotonic() - started
    result = node.trainer.fit(node.notes, [])
    last = result.history[-1]
    trainable = sum(p.numel() for p in node.loaded.model.parameters() if p.requires_grad)
    return {
        "load_seconds": round(loaded_s, 1),
        "train_seconds": round(last.train_seconds, 1),
        "tokens_per_s": round(last.tokens_per_second, 1),
        "trainable_parameters": trainable,
        "quantization": node.loaded.config.quantization,
    }


def federated_round(
    base: str, state_dir: Path, work: Path, cfg: FederationConfig, notes: int, heldout: int
) -> dict[str, Any]:
    """One round between two SuperNodes through a TLS SuperLink; per node: bytes each way,
    the round's seconds and the node's peak memory (the SuperNode and the ClientApp it starts)."""
    certs = make_certificates(work / "certs", list(HOSPITALS))
    consortium = Consortium(work / "superlink", certs, server_state=state_dir)
    configs = _node_configs(work, state_dir, notes, heldout)
    consortium.start_superlink()
    for hospital in HOSPITALS:
        consortium.register(hospital)
        consortium.start_supernode(hospital, configs[hospital], one_core_each())
        # A SuperLink runs on the consortium's own server; here it shares two cores with both
        # nodes. Nodes at equal priority starved it: no heartbeat for over a minute while they
        # loaded the 1B base, and the SuperLink failed the run. The ClientApps inherit this.
        os.setpriority(os.PRIO_PROCESS, consortium.processes[hospital].pid, NODE_NICE)
    peaks = {name: TreePeak(proc.pid, 0.5) for name, proc in consortium.processes.items()}
    started = time.monotonic()
    try:
        done = consortium.run(cfg, timeout=5400)
    finally:
        seconds = time.monotonic() - started
        consortium.stop()
        for peak in peaks.values():
            peak.stop()
    nodes = {}
    for hospital in HOSPITALS:
        events = read_journal(Path(str(configs[hospital]["journal"])))
        completed = [e.fields for e in events if e.event == "round_completed"]
        nodes[hospital] = {
            "round": completed[-1] if completed else None,
            "events": sorted({e.event for e in events}),
            "peak_rss_mb": round(peaks[hospital].rss_mb),
            "peak_anon_mb": round(peaks[hospital].anon_mb),
            "peak_during": _phase(peaks[hospital].anon_peak_at, events),
        }
    server = peaks["superlink"]
    return {
        "ok": done.ok,
        "status": done.status,
        "tail": "" if done.ok else done.tail[-1500:],
        "seconds": round(seconds, 1),
        "nodes": nodes,
        "superlink_peak_rss_mb": round(server.rss_mb),
        "superlink_peak_anon_mb": round(server.anon_mb),
        "run_config": {
            "mode": cfg.mode,
            "compression": cfg.compression,
            "layers": cfg.layers,
            "optimizer": cfg.optimizer,
        },
    }


def _phase(when: float | None, events: list[JournalEntry]) -> str:
    """The step of a node's round at Unix time `when`, from its journal: before its update was
    made, while it trained, or after it sent the update (held-out scoring and promotion)."""
    if when is None:
        return "unknown"
    times = {e.event: dt.datetime.fromisoformat(e.time).timestamp() for e in events}
    if when < times.get("round_started", float("inf")):
        return "loading"
    if when < times.get("round_completed", float("inf")):
        return "training"
    return "after training (sending, scoring, promotion)"


def _node_configs(work: Path, state_dir: Path, notes: int, heldout: int) -> dict[str, dict]:
    """Each hospital its own consecutive BC5CDR training sentences and held-out sentences."""
    train = read_notes(str(TRAIN)).notes
    devel = read_notes(str(DEVEL)).notes
    configs = {}
    for i, hospital in enumerate(HOSPITALS):
        root = work / hospital
        root.mkdir(parents=True, exist_ok=True)
        write_conll(train[i * notes : (i + 1) * notes], root / "notes.tsv")
        write_conll(devel[i * heldout : (i + 1) * heldout], root / "heldout.tsv")
        configs[hospital] = {
            "hospital": hospital,
            "notes": str(root / "notes.tsv"),
            "heldout": str(root / "heldout.tsv"),
            "state-dir": str(root / "state"),
            "registry": str(root / "registry"),
            "journal": str(root / "journal.jsonl"),
            "audit-dir": str(root / "audit"),
            "bases-dir": str(state_dir),
        }
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="one local epoch of a hospital's node")
    train.add_argument("--base", required=True)
    train.add_argument("--mode", choices=("layers", "lora"), default="lora")
    train.add_argument("--quantization", choices=("none", "nf4"), default="none")
    train.add_argument("--notes", type=int, default=32)
    train.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(local_training(args)))


if __name__ == "__main__":
    main()
