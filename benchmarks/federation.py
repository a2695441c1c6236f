"""Federation benchmark: BC5CDR over 3 simulated hospitals, layers vs LoRA vs full, compression.

For each configuration: strict test F1 after every round, bytes per client per round (measured
on the serialized payloads) and in total, against full-model FedAvg (every parameter at fp32
each way) and against centralized training of the same layers on the union of the hospitals'
notes for the same number of epochs. Rows persist in results/federation.json, so the table is
rewritten after every configuration. Run from the repository root:

    .venv/bin/python benchmarks/federation.py [--notes-per-hospital N] [--rounds R] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import ModelConfig, TrainConfig  # noqa: E402
from appliance.evaluation import evaluate_predictions  # noqa: E402
from appliance.inference import Annotator  # noqa: E402
from appliance.layers import LayerSelection  # noqa: E402
from appliance.model import load_model  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from appliance.training import Trainer  # noqa: E402
from benchmarks.core import machine  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.partition import partition  # noqa: E402
from federation.simulation import simulate  # noqa: E402

DATA = ROOT / "data" / "bc5cdr"
RESULT = ROOT / "benchmarks" / "results" / "federation.md"
STORE = RESULT.with_suffix(".json")
LABELS = ("Chemical", "Disease")
DEFAULT_SEED = FederationConfig().seed  # also TrainConfig's: the seed of unseeded rows


def _lora_r16(rate: float, **extra: Any) -> dict[str, Any]:
    """LoRA rank 16 (alpha 32; `extra` overrides) with int8 deltas at `rate` for both the
    adapters and the head."""
    return {"mode": "lora", "lora_rank": 16, "lora_alpha": 32, "learning_rate": rate,
            "head_learning_rate": rate, "compression": "int8", **extra}  # fmt: skip


# name -> (split, FederationConfig overrides)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "layers-top8 iid": ("iid", {"mode": "layers"}),
    "layers-top8 dirichlet": ("dirichlet", {"mode": "layers"}),
    "layers-top8+int8 dirichlet": ("dirichlet", {"mode": "layers", "compression": "int8"}),
    "lora-top8 dirichlet": ("dirichlet", {"mode": "lora", "learning_rate": 1e-3}),
    "lora-top8+int8 iid": ("iid", {"mode": "lora", "learning_rate": 1e-3, "compression": "int8"}),
    "lora-top8+int8 dirichlet": (
        "dirichlet",
        {"mode": "lora", "learning_rate": 1e-3, "compression": "int8"},
    ),
    "lora-r16-lr3e-3+int8 dirichlet": ("dirichlet", _lora_r16(3e-3)),
    "lora-r16-lr2e-3+int8 dirichlet": ("dirichlet", _lora_r16(2e-3)),
    "lora-r16-lr3e-3-cosine+int8 dirichlet": ("dirichlet", _lora_r16(3e-3, lr_schedule="cosine")),
    "lora-r32-lr3e-3-cosine+int8 dirichlet": (
        "dirichlet",
        _lora_r16(3e-3, lr_schedule="cosine", lora_rank=32, lora_alpha=64),
    ),
    **{
        f"lora-r32-lr3e-3-cosine+int8 dirichlet, seed {seed}": (  # another init and order
            "dirichlet",
            _lora_r16(3e-3, lr_schedule="cosine", lora_rank=32, lora_alpha=64, seed=seed),
        )
        for seed in (14, 15, 16, 17)
    },
    "full dirichlet": ("dirichlet", {"mode": "full", "learning_rate": 1e-4}),
}


def full_model_bytes(state_dir: Path) -> int:
    """Bytes one full-model FedAvg exchange carries one way: every parameter at fp32."""
    loaded = load_model(ModelConfig(base="embedded"), LABELS, state_dir, "head")
    return sum(p.numel() * 4 for p in loaded.model.parameters())


def centralized(args: argparse.Namespace, train: list, test: list, seed: int) -> dict[str, Any]:
    """The same top:8 training on the union of the notes, rounds x local epochs epochs."""
    cfg = TrainConfig(
        layers="top:8",
        epochs=args.rounds,
        cache_dir=str(args.state_dir / "act"),
        patience=args.rounds + 1,
        seed=seed,
    )
    loaded = load_model(ModelConfig(base="embedded"), LABELS, args.state_dir, "top:8")
    selection = LayerSelection.parse("top:8", loaded.num_layers)
    started = time.perf_counter()
    Trainer(loaded, selection, cfg, progress=False).fit(train, [])
    annotator = Annotator(loaded, cfg.max_tokens, cfg.context_tokens, 16)
    f1 = evaluate_predictions(test, annotator.predict(test))["entity_strict"]["overall"]["f1"]
    return {"f1": float(f1), "seconds": round(time.perf_counter() - started, 1)}


def run(name: str, args: argparse.Namespace, train: list, test: list) -> dict[str, Any]:
    split, overrides = CONFIGS[name]
    cfg = plain_config(rounds=args.rounds, local_epochs=1, layers="top:8", min_nodes=3, **overrides)
    parts = partition(train, 3, split, alpha=0.5, seed=13)
    started = time.perf_counter()
    state = args.state_dir / "federation" / split
    result = simulate(cfg, parts, test, state, bases_dir=args.state_dir)
    rounds = result.as_dict()["rounds"]
    up = [sum(r["bytes_up"].values()) / len(r["bytes_up"]) for r in rounds]
    down = [sum(r["bytes_down"].values()) / len(r["bytes_down"]) for r in rounds]
    return {
        "name": name,
        "split": split,
        "config": overrides,
        "rounds": args.rounds,
        "hospital_notes": [len(p) for p in parts],
        "initial_f1": result.initial_f1,
        "f1_per_round": [r["test_f1"] for r in rounds],
        "bytes_up_per_client_round": up,
        "bytes_down_per_client_round": down,
        "exchange_parameters": result.exchange_parameters,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _central_key(rounds: int, seed: int) -> str:
    return str(rounds) if seed == DEFAULT_SEED else f"{rounds}, seed {seed}"


def centralized_f1(store: dict[str, Any], rounds: int, seed: int = DEFAULT_SEED) -> float | None:
    """Centralized F1 for `rounds` epochs (rounds x 1 local epoch) with `seed`, or None."""
    central = store.get("centralized", {})
    if "f1" in central:  # the first runs stored one figure, for 3 rounds
        central = {"3": central}
    row = central.get(_central_key(rounds, seed))
    return None if row is None else float(row["f1"])


def _row_seed(row: dict[str, Any]) -> int:
    return int(row["config"].get("seed", DEFAULT_SEED))


def _row_gap(store: dict[str, Any], row: dict[str, Any]) -> float | None:
    """Final F1 minus centralized with the same seed (None while that has not run)."""
    central = centralized_f1(store, row["rounds"], _row_seed(row))
    return None if central is None else row["f1_per_round"][-1] - central


def seed_table(store: dict[str, Any]) -> list[str]:
    """Per-seed final F1 of each configuration run with several seeds, beside centralized
    training with the same seed, and the mean gap."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in store["rows"].values():
        base = row["name"].split(", seed ")[0]
        groups.setdefault(f"{base}, {row['rounds']} rounds", []).append(row)
    lines = []
    for name, rows in groups.items():
        paired = []
        for row in rows:
            central = centralized_f1(store, row["rounds"], _row_seed(row))
            if central is not None:
                paired.append((_row_seed(row), row["f1_per_round"][-1], central))
        if len(paired) < 2:
            continue
        lines += [f"### {name}: seeds", "", "| seed | federated final F1 | centralized F1 "
                  "(same seed) | gap |", "|---|---|---|---|"]  # fmt: skip
        for seed, fed, central in sorted(paired):
            lines.append(
                f"| {seed} | {fed:.4f} | {central:.4f} | {(fed - central) * 100:+.1f} pt |"
            )
        gaps = np.array([fed - central for _, fed, central in paired]) * 100
        summary = (
            f"Mean gap over {len(paired)} seeds: **{gaps.mean():+.2f} pt** "
            f"(standard deviation {gaps.std(ddof=1):.2f}, worst {gaps.min():+.1f})."
        )
        lines += ["", summary, ""]
    return lines


def write_table(store: dict[str, Any]) -> None:
    full = store["full_model_bytes"]
    lines = [
        "# Federation benchmark",
        "",
        *[f"Command: `{command}`  " for command in store.get("commands", [])],
        f"Machine: {store['machine']}  ",
        f"Date: {store['date']}",
        "",
        f"BC5CDR train sentences split over 3 hospitals ({store['notes_per_hospital']} each on "
        f"average), strict entity F1 on the first {store['test_notes']} test sentences, "
        "SmolLM2-135M, R rounds x 1 local epoch (R per row). Full-model FedAvg moves "
        f"{full / 1e6:.1f} MB each way per client per round (every parameter at fp32). "
        "Centralized: top:8 on the union of the notes for R epochs (the same sentence passes): "
        + ", ".join(
            f"R={r}: strict F1 **{centralized_f1(store, int(r)):.4f}**"
            for r in sorted(_central_rounds(store), key=int)
        )
        + ". A row with another seed is compared with centralized training with that seed.",
        "",
        "| configuration | split | rounds | F1 per round | final F1 | vs centralized | up+down per "
        "client per round | share of full FedAvg | total bytes (3 clients) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in store["rows"].values():
        per_round = row["bytes_up_per_client_round"][-1] + row["bytes_down_per_client_round"][-1]
        total = 3 * sum(row["bytes_up_per_client_round"]) + 3 * sum(
            row["bytes_down_per_client_round"]
        )
        final = row["f1_per_round"][-1]
        gap_f1 = _row_gap(store, row)
        gap = f"{gap_f1 * 100:+.1f} pt" if gap_f1 is not None else "n/a"
        lines.append(
            f"| {row['name']} | {row['split']} | {row['rounds']} | "
            f"{', '.join(f'{f:.3f}' for f in row['f1_per_round'])} | {final:.4f} | {gap} | "
            f"{per_round / 1e6:.2f} MB | {per_round / (2 * full) * 100:.2f}% | "
            f"{total / 1e6:.1f} MB |"
        )
    lines += ["", *seed_table(store)]
    RESULT.write_text("\n".join(lines + [store.get("notes", "")]) + "\n", encoding="utf-8")


def _central_rounds(store: dict[str, Any]) -> list[str]:
    central = store.get("centralized", {})
    return ["3"] if "f1" in central else [key for key in central if key.isdigit()]


def save(store: dict[str, Any]) -> None:
    """Write the store, merged with what another invocation saved meanwhile, and the table."""
    disk: dict[str, Any] = json.loads(STORE.read_text()) if STORE.exists() else {}
    for key in ("rows", "centralized"):
        store[key] = {**disk.get(key, {}), **store.get(key, {})}
    extra = [c for c in disk.get("commands", []) if c not in store.get("commands", [])]
    store["commands"] = [*extra, *store.get("commands", [])]
    STORE.write_text(json.dumps(store, indent=2), encoding="utf-8")
    write_table(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notes-per-hospital", type=int, default=400)
    parser.add_argument("--test-notes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/state"))
    parser.add_argument(
        "--only",
        nargs="*",
        choices=sorted(CONFIGS),
        help="run only these (none: only the centralized runs)",
    )
    parser.add_argument("--skip-centralized", action="store_true")
    parser.add_argument(
        "--central-seeds", type=int, nargs="*", default=[DEFAULT_SEED],
        help="seeds of the centralized runs (each run once per round count and seed)",
    )  # fmt: skip
    args = parser.parse_args()
    train = read_notes(str(DATA / "train.tsv")).notes[: 3 * args.notes_per_hospital]
    test = read_notes(str(DATA / "test.tsv")).notes[: args.test_notes]
    store: dict[str, Any] = json.loads(STORE.read_text()) if STORE.exists() else {"rows": {}}
    commands = store.get("commands", [store["command"]] if "command" in store else [])
    store.update(
        commands=[*commands, "python benchmarks/federation.py " + shlex.join(sys.argv[1:])],
        machine=machine(),
        date=time.strftime("%Y-%m-%d"),
        notes_per_hospital=args.notes_per_hospital,
        test_notes=args.test_notes,
        full_model_bytes=full_model_bytes(args.state_dir),
    )
    store.pop("command", None)
    if "f1" in store.get("centralized", {}):
        store["centralized"] = {"3": store["centralized"]}
    for seed in [] if args.skip_centralized else args.central_seeds:
        key = _central_key(args.rounds, seed)
        if key not in store.setdefault("centralized", {}):
            store["centralized"][key] = centralized(args, train, test, seed)
            print("centralized", key, store["centralized"][key], flush=True)
            save(store)
    store["rows"] = {f"{r['name']}, {r['rounds']} rounds": r for r in store["rows"].values()}
    for name in list(CONFIGS) if args.only is None else args.only:
        row = run(name, args, train, test)
        store["rows"][f"{name}, {args.rounds} rounds"] = row
        print(name, row["f1_per_round"], flush=True)
        save(store)
    save(store)


if __name__ == "__main__":
    main()
