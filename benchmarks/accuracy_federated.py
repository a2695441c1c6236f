"""Federated against centralized at full data: all BC5CDR training sentences over 3 or 5
hospitals, against one site holding all of them, the same recipe, seed and sentence passes.

A federated row splits all 4,560 training sentences over `--hospitals` hospitals (Dirichlet 0.5
label skew, split seed 8) and runs `--rounds` rounds of one local epoch from the seeded start;
its centralized twin trains the same recipe with the same seed on all sentences for as many
epochs (each sentence passes through training as often; each federated round has its own warmup
and decay, the twin one over all its epochs). Both score all 4,797 test sentences (strict entity
F1). A federated row checkpoints after every round and a centralized one after every epoch, so
rows span invocations; finished rows persist in results/accuracy_federated.json and
accuracy_federated.md is rewritten after each. Run from the repository root:

    .venv/bin/python benchmarks/accuracy_federated.py --recipe lora-top8 --hospitals 3 5 \
        --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import ApplianceConfig  # noqa: E402
from appliance.notes import Note  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from benchmarks.accuracy import RECIPES  # noqa: E402
from benchmarks.privacy_lab import RoundCheckpoint, Scorer, share_prefix_cache  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from benchmarks.rows import RowStore  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.partition import partition  # noqa: E402
from federation.simulation import RoundRecord, simulate  # noqa: E402
from federation.task import HospitalNode  # noqa: E402

DATA = ROOT / "data" / "bc5cdr"
RESULT = ROOT / "benchmarks" / "results" / "accuracy_federated.md"
STORE = RESULT.with_suffix(".json")
SPLIT_SEED = 8


def _run_dir(args: argparse.Namespace, *parts: Any) -> Path:
    key = json.dumps([*parts, args.rounds, args.train, args.test, args.batch_size])
    return args.state_dir / "accuracy" / "federated" / hashlib.sha256(key.encode()).hexdigest()[:12]


def _prefix_cache(args: argparse.Namespace) -> Path:
    return args.state_dir / "accuracy" / "prefix-cache"  # shared by every row's nodes


def federated(args: argparse.Namespace, cfg: FederationConfig, parts: list[list[Note]],
              test: list[Note]) -> dict[str, Any]:  # fmt: skip
    """`cfg.rounds` rounds over `parts`, resumed from its round checkpoint."""
    run_dir = _run_dir(args, "federated", args.recipe, len(parts), cfg.seed)
    scorer = Scorer(_prefix_cache(args))
    checkpoint = RoundCheckpoint(run_dir / "checkpoint")
    done, arrays, meta = checkpoint.load()
    share_prefix_cache(_prefix_cache(args), [run_dir / f"hospital-{i}" for i in range(len(parts))])
    started = time.perf_counter()

    def on_round(record: RoundRecord, global_arrays: dict[str, np.ndarray]) -> None:
        meta["records"].append(asdict(record))
        checkpoint.save(meta | {"seconds": meta["seconds"] + time.perf_counter() - started},
                        global_arrays)  # fmt: skip

    if done < cfg.rounds:
        simulate(cfg, parts, test, run_dir, on_round, args.state_dir, cfg.rounds, arrays, scorer,
                 first_round=done + 1)  # fmt: skip
    else:  # every round ran; the score was lost with the invocation that ran them
        node = HospitalNode.load(cfg, parts[0], run_dir / "hospital-0", "hospital-0",
                                 bases_dir=args.state_dir)  # fmt: skip
        scorer(node, arrays or {}, test)
    records = meta["records"]
    up = sum(sum(r["bytes_up"].values()) for r in records) / max(len(records), 1)
    down = sum(sum(r["bytes_down"].values()) for r in records) / max(len(records), 1)
    return {**scorer.last, "bytes_per_round": up + down,
            "seconds": round(meta["seconds"] + time.perf_counter() - started, 1)}  # fmt: skip


def centralized(args: argparse.Namespace, cfg: FederationConfig, train: list[Note],
                test: list[Note]) -> dict[str, Any]:  # fmt: skip
    """One site with every training sentence, `rounds x local_epochs` epochs, resumable."""
    epochs = cfg.rounds * cfg.local_epochs
    central = replace(cfg, local_epochs=epochs, rounds=1)
    run_dir = _run_dir(args, "centralized", args.recipe, cfg.seed)
    started = time.perf_counter()
    share_prefix_cache(_prefix_cache(args), [run_dir / "site"])
    node = HospitalNode.load(central, train, run_dir / "site", "site", bases_dir=args.state_dir)
    node.trainer.checkpoint = run_dir / "train.ckpt"
    update = node.train_round(node.initial_arrays(), 1)
    scorer = Scorer(_prefix_cache(args))
    scorer(node, update.payload, test)
    node.trainer.checkpoint.unlink(missing_ok=True)
    return {**scorer.last, "epochs": epochs, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="lora-top8", choices=list(RECIPES))
    parser.add_argument("--hospitals", nargs="+", type=int, default=[3, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train", type=int, default=0, help="first N training sentences (0 all)")
    parser.add_argument("--test", type=int, default=0, help="first N test sentences (0 all)")
    parser.add_argument("--state-dir", type=Path, default=Path(ApplianceConfig().state_dir))
    parser.add_argument("--store", type=Path, default=STORE)
    args = parser.parse_args()
    train = read_notes(str(DATA / "train.tsv")).notes[: args.train or None]
    test = read_notes(str(DATA / "test.tsv")).notes[: args.test or None]
    rows = RowStore(
        args.store, "python benchmarks/accuracy_federated.py " + shlex.join(sys.argv[1:])
    )
    sizes = f"train {len(train)} test {len(test)} rounds {args.rounds} batch {args.batch_size}"
    for seed in args.seeds:
        cfg = plain_config(seed=seed, rounds=args.rounds, batch_size=args.batch_size,
                           compression="none", **RECIPES[args.recipe][0])  # fmt: skip
        for where in ["centralized", *(f"{n} hospitals" for n in args.hospitals)]:
            key = f"{args.recipe} | {where} | seed {seed} | {sizes}"
            if rows.has(key):
                continue
            print(f"running {key}", flush=True)
            if where == "centralized":
                row = centralized(args, cfg, train, test)
            else:
                n = int(where.split()[0])
                parts = partition(train, n, "dirichlet", alpha=0.5, seed=SPLIT_SEED)
                row = federated(args, replace(cfg, min_nodes=n), parts, test)
                row["hospitals"] = [len(p) for p in parts]
            row |= {"recipe": args.recipe, "where": where, "seed": seed, "sizes": sizes}
            store = rows.add(key, row)
            print(f"  -> F1 {row['f1']:.4f}", flush=True)
            if args.store == STORE:
                RESULT.write_text(render(store), encoding="utf-8")


def render(store: dict[str, Any]) -> str:
    rows = list(store.get("rows", {}).values())
    central = {(r["recipe"], r["seed"], r["sizes"]): r["f1"] for r in rows
               if r["where"] == "centralized"}  # fmt: skip
    lines = [
        "# Federated against centralized at full data (BC5CDR)",
        "",
        "`benchmarks/accuracy_federated.py`: all training sentences over N hospitals "
        "(Dirichlet 0.5, split seed 8), one local epoch per round, from the seeded start; the "
        "centralized twin trains the same recipe and seed on all sentences for as many epochs. "
        "Strict entity F1 on the test set. Gap: federated minus its twin, in F1 points.",
        "",
        "| recipe | where | seed | strict F1 | Chemical / Disease | gap (points) "
        "| MB per round (all, up + down) | minutes | hospitals' sentences |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["recipe"], r["where"], r["seed"])):
        twin = central.get((r["recipe"], r["seed"], r["sizes"]))
        paired = twin is not None and r["where"] != "centralized"
        gap = f"{100 * (r['f1'] - twin):+.2f}" if paired else ""
        mb = f"{r['bytes_per_round'] / 1e6:.1f}" if "bytes_per_round" in r else ""
        types = r["per_type"]
        lines.append(
            f"| {r['recipe']} | {r['where']} | {r['seed']} | {r['f1']:.4f} | "
            f"{types.get('Chemical', 0):.4f} / {types.get('Disease', 0):.4f} | {gap} | {mb} | "
            f"{r['seconds'] / 60:.0f} | {r.get('hospitals', '')} |"
        )
    lines += ["", "## Runs", ""]
    lines += [f"- {k}: `{r['command']}`, {r['machine']}, {r['date']}"
              for k, r in store.get("rows", {}).items()]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
