"""Accuracy at full data: the embedded model trained centrally on BC5CDR, recipe by recipe.

A row trains one recipe on BC5CDR's training sentences (all 4,560, or for the learning curve
a seeded random subset of them: `--sizes`), keeps the epoch with the best strict F1 on the
development set (all 4,581 sentences; training stops after `--patience` epochs without a
gain), then scores all 4,797 test sentences: strict entity F1 overall and per type, and
character-span F1. Layer selection and LoRA are trained by the same `Trainer` the product
uses; a LoRA recipe gets its adapters from `federation.modes`, as a federated node does. A
row's training is checkpointed after every epoch (`Trainer.checkpoint`), so a row cut short
resumes at its next epoch in a later invocation; finished rows persist in
results/accuracy.json and accuracy.md is rewritten after each. Run from the repository root:

    .venv/bin/python benchmarks/accuracy.py --recipes top8 lora-top8 --seeds 1 \
        [--sizes 500 1000 2000 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import ApplianceConfig, TrainConfig  # noqa: E402
from appliance.evaluation import evaluate_predictions  # noqa: E402
from appliance.layers import LayerSelection  # noqa: E402
from appliance.notes import Note  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from appliance.training import Trainer  # noqa: E402
from benchmarks.accuracy_report import write_report  # noqa: E402
from benchmarks.privacy_lab import summary  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from benchmarks.rows import RowStore  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.task import load_for_training, seeded_start  # noqa: E402

DATA = ROOT / "data" / "bc5cdr"
RESULT = ROOT / "benchmarks" / "results" / "accuracy.md"
STORE = RESULT.with_suffix(".json")


def _layers(spec: str, rate: float = 3e-4) -> dict[str, Any]:
    return {"mode": "layers", "layers": spec, "learning_rate": rate, "head_learning_rate": 1e-3}


def _lora(spec: str, rank: int = 16, rate: float = 2e-3) -> dict[str, Any]:
    return {"mode": "lora", "layers": spec, "lora_rank": rank, "lora_alpha": 2 * rank,
            "learning_rate": rate, "head_learning_rate": rate}  # fmt: skip


# name -> (FederationConfig fields: what trains, how; about)
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "top8": (_layers("top:8"), "the top 8 of 30 layers + head, lr 3e-4 (head 1e-3)"),
    "top16": (_layers("top:16"), "the top 16 layers + head, lr 3e-4 (head 1e-3)"),
    "all": (_layers("all", 1e-4), "all 30 layers + head, lr 1e-4 (head 1e-3)"),
    "lora-top8": (_lora("top:8"), "LoRA r16 on the top 8 layers + head, lr 2e-3"),
    "lora-all": (_lora("all"), "LoRA r16 on all 30 layers + head, lr 2e-3"),
}
# The tools measured on the layer-skipping rows: name -> (FederationConfig fields, objective
# fields of appliance.objective that differ from its default, about)
TOOLS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "causal": ({"attention": "causal"}, {}, "with the pre-training (causal) attention mask"),
    "cosine": ({}, {"schedule": "cosine"}, "with cosine decay after the warm-up"),
    "smooth": ({}, {"label_smoothing": 0.1}, "with label smoothing 0.1"),
    "layer-decay": ({}, {"layer_decay": 0.8}, "with each layer's rate 0.8x the one above it"),
    "o-half": ({}, {"o_weight": 0.5}, "with the O tag's loss weighted 0.5"),
    "lr1e-3": ({"learning_rate": 1e-3}, {}, "at lr 1e-3"),
}
# recipe -> TrainConfig fields of the objective that differ from its default
OBJECTIVE: dict[str, dict[str, Any]] = {}
for _base in ("top8", "top16"):
    for _tool, (_fields, _objective, _about) in TOOLS.items():
        RECIPES[f"{_base}-{_tool}"] = ({**RECIPES[_base][0], **_fields}, f"as {_base} {_about}")
        OBJECTIVE[f"{_base}-{_tool}"] = _objective


def train_config(
    cfg: FederationConfig, args: argparse.Namespace, seed: int, recipe: str
) -> TrainConfig:
    return TrainConfig(
        **OBJECTIVE.get(recipe, {}),
        layers=cfg.spec,
        labels=cfg.labels,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=cfg.learning_rate,
        head_learning_rate=cfg.head_learning_rate,
        seed=seed,
        max_tokens=cfg.max_tokens,
        context_tokens=cfg.context_tokens,
        cache_dir=str(args.state_dir / "accuracy" / "prefix-cache"),
    )


def subset(notes: list[Note], size: int, seed: int) -> list[Note]:
    """`size` training sentences drawn at random by `seed` (all of them for 0 or more)."""
    if size <= 0 or size >= len(notes):
        return notes
    return random.Random(seed).sample(notes, size)


def score(trainer: Trainer, notes: list[Note]) -> dict[str, Any]:
    """Strict entity F1 (overall, per type) and character-span F1 of the trained model."""
    windows = trainer.encode(notes)
    states, _ = trainer.prefix(windows)
    metrics = evaluate_predictions(notes, trainer.predict(notes, windows, states))
    overall = metrics["entity_strict"]["overall"]
    return {
        **summary(metrics),
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
    }


def run_row(args: argparse.Namespace, recipe: str, size: int, seed: int) -> dict[str, Any]:
    """Train, early-stop and score one row; resumed from its epoch checkpoint when it exists."""
    cfg = plain_config(seed=seed, **RECIPES[recipe][0])
    splits = {n: read_notes(str(DATA / f"{n}.tsv")).notes for n in ("train", "devel", "test")}
    splits["devel"] = splits["devel"][: args.dev_notes or None]
    splits["test"] = splits["test"][: args.test_notes or None]
    train = subset(splits["train"], size, seed)
    started = time.perf_counter()
    cfg, loaded = load_for_training(cfg, args.state_dir, gpu=False)
    tcfg = train_config(cfg, args, seed, recipe)
    selection = LayerSelection.parse(cfg.spec, loaded.num_layers)
    trainer = Trainer(loaded, selection, tcfg, progress=True, fresh_head=False)
    names = seeded_start(trainer, cfg)
    key = json.dumps([recipe, RECIPES[recipe][0], len(train), seed, args.epochs, args.patience,
                      args.batch_size, args.dev_notes, args.test_notes])  # fmt: skip
    run_dir = args.state_dir / "accuracy" / "runs" / hashlib.sha256(key.encode()).hexdigest()[:12]
    trainer.checkpoint = run_dir / "train.ckpt"
    result = trainer.fit(train, splits["devel"])
    trained_s = sum(h.train_seconds for h in result.history)
    test_started = time.perf_counter()
    scores = score(trainer, splits["test"])
    params = dict(loaded.model.named_parameters())
    travelling = sum(params[name].numel() for name in names)
    return {
        "recipe": recipe,
        "train_notes": len(train),
        "seed": seed,
        **scores,
        "schedule_epochs": args.epochs,  # the learning-rate schedule's length
        "best_epoch": result.best_epoch,
        "best_dev_f1": result.best_dev_f1,
        "dev_f1": [round(h.dev_f1, 4) for h in result.history],
        "losses": [round(h.loss, 4) for h in result.history],
        "epoch_s": [round(h.train_seconds, 1) for h in result.history],
        "train_s": round(trained_s, 1),
        "test_s": round(time.perf_counter() - test_started, 1),
        "wall_s": round(time.perf_counter() - started, 1),  # this invocation's part of the row
        "trainable": travelling,
        "exchange_mb": travelling * 4 / 1e6,  # fp32, as one exchange carries it uncompressed
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "checkpoint": str(trainer.checkpoint),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["top8"], choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[0], help="training sentences (0: all 4,560)"
    )
    parser.add_argument("--dev-notes", type=int, default=0, help="first N devel sentences (0: all)")
    parser.add_argument("--test-notes", type=int, default=0, help="first N test sentences (0: all)")
    parser.add_argument("--epochs", type=int, default=8, help="most epochs a row trains")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a dev gain")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--state-dir", type=Path, default=Path(ApplianceConfig().state_dir))
    parser.add_argument("--store", type=Path, default=STORE)
    args = parser.parse_args()
    rows = RowStore(args.store, "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:]))
    for recipe in args.recipes:
        for seed in args.seeds:
            for size in args.sizes:
                key = f"{recipe} | train {size or 'all'} | seed {seed} | epochs <= {args.epochs}" \
                      f", patience {args.patience}, batch {args.batch_size} | dev " \
                      f"{args.dev_notes or 'all'} | test {args.test_notes or 'all'}"  # fmt: skip
                if rows.has(key):
                    continue
                print(f"running {key}", flush=True)
                row = run_row(args, recipe, size, seed)
                store = rows.add(key, row | {"about": RECIPES[recipe][1]})
                Path(row["checkpoint"]).unlink(missing_ok=True)  # the row holds the result now
                print(f"  -> F1 {row['f1']:.4f} (best epoch {row['best_epoch']})", flush=True)
                if args.store == STORE:
                    write_report(store, RESULT)


if __name__ == "__main__":
    main()
