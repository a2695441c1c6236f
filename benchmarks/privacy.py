"""Differential privacy against accuracy: recipes x epsilon x seeds, federated over 3 hospitals.

Every row is 10 nightly rounds (unless --rounds) over all BC5CDR training sentences split over 3
hospitals (Dirichlet 0.5), scored on all test sentences. A DP row's noise multiplier is the one
Opacus' RDP accountant gives for the target epsilon at delta 1e-5 over all rounds for the
smallest hospital (the larger ones spend less; the table shows each one's spend). Its no-DP twin
is the same recipe with the same warm start, data and seed. Rows persist in
results/privacy.json, so a grid can be filled over several invocations; the report is rewritten
after every row. Run from the repository root:

    .venv/bin/python benchmarks/privacy.py --recipes lora8-warm --eps none 8 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.writers import write_conll  # noqa: E402
from benchmarks.experiments_local import noise_for  # noqa: E402
from benchmarks.privacy_lab import (  # noqa: E402
    Corpus,
    RoundCheckpoint,
    Scorer,
    add_corpus_args,
    share_prefix_cache,
    trim_ledgers,
    warm_start,
)
from benchmarks.privacy_report import write_report  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from benchmarks.rows import RowStore  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.simulation import RoundRecord, simulate  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "privacy.md"
STORE = RESULT.with_suffix(".json")
DELTA = 1e-5


def _lora(rank: int, rate: float, batch: int) -> dict[str, Any]:
    return {"mode": "lora", "lora_rank": rank, "lora_alpha": 2 * rank, "learning_rate": rate,
            "head_learning_rate": rate, "batch_size": batch}  # fmt: skip


# name -> (FederationConfig overrides, public warm-start epochs (0: the seeded start), about)
RECIPES: dict[str, tuple[dict[str, Any], int, str]] = {
    "lora8-cold": (_lora(16, 3e-3, 256), 0, "LoRA r16 on top:8, batch 256, lr 3e-3, seeded start"),
    "lora8-warm": (
        _lora(16, 3e-3, 256),
        3,
        "LoRA r16 on top:8, batch 256, lr 3e-3, from the public warm start (3 epochs)",
    ),
    "lora8-warm-lr1e-2": (
        _lora(16, 1e-2, 256),
        3,
        "as lora8-warm, lr 1e-2 in the private rounds (lora8-warm's warm start)",
    ),
    "lora8-warm-r4": (_lora(4, 3e-3, 256), 3, "as lora8-warm, LoRA rank 4"),
    "lora8-warm-b16": (
        _lora(16, 2e-3, 16),
        3,
        "as lora8-warm, batch 16 and lr 2e-3 in the private rounds (lora8-warm's warm start): "
        "at the same epsilon, 16x the steps with a smaller noise multiplier each",
    ),
    "lora8-warm-sgd": (
        {**_lora(16, 0.5, 256), "optimizer": "sgd"},
        3,
        "as lora8-warm with SGD (momentum 0.9, lr 0.5): steps in proportion to the noisy "
        "gradient, where AdamW's first steps in every round move each weight by ~lr",
    ),
    "lora2-warm-r2": (
        {**_lora(2, 5e-3, 256), "layers": "top:2"},
        3,
        "LoRA r2 on top:2 (44k trained weights with the head, against 1.3 M for lora8-warm: "
        "a 5.5x smaller noise norm per step at the same noise), batch 256, lr 5e-3, warm",
    ),
    "lora8-warm-perlayer": (
        {**_lora(16, 3e-3, 256), "dp_clipping": "per-layer"},
        3,
        "as lora8-warm, DP clipping per tensor (its no-DP twin is lora8-warm's)",
    ),
    "lora8-warm-sub64": (
        _lora(16, 3e-3, 256),
        3,
        "as lora8-warm, each DP step projected onto the top 64 directions of the public notes' "
        "gradients at the round's model (federation.subspace; its warm start and no-DP twin are "
        "lora8-warm's)",
    ),
    "lora8-warm-sub64-sgd": (
        {**_lora(16, 0.5, 256), "optimizer": "sgd"},
        3,
        "as lora8-warm-sub64 with lora8-warm-sgd's SGD: a step along the projected gradient "
        "(AdamW's per-weight scaling would spread it out of the subspace again)",
    ),
    "lora8-warm-sub64-adam": (
        {**_lora(16, 3e-3, 256), "optimizer": "sgd"},
        3,
        "as lora8-warm-sub64 with Adam in the subspace's 64 coordinates (each scaled by its "
        "running RMS, then SGD momentum 0.9 at lr 3e-3): an adaptive step that stays in it",
    ),
    "lora8-warm-sub64-adam-lr1e-2": (
        {**_lora(16, 1e-2, 256), "optimizer": "sgd"},
        3,
        "as lora8-warm-sub64-adam at lr 1e-2",
    ),
    "layers8-warm": (
        {
            "mode": "layers",
            "learning_rate": 1e-3,
            "head_learning_rate": 3e-3,
            "batch_size": 256,
            "dp_clipping": "ghost",
        },
        3,
        "whole layers top:8 (DP on every weight of them, by ghost clipping), batch 256, lr 1e-3 "
        "(head 3e-3), warm",
    ),
}
# Recipes whose no-DP run is another recipe's (they differ only in how DP works)
TWINS = {
    "lora8-warm-perlayer": "lora8-warm",
    "lora8-warm-sub64": "lora8-warm",
    "lora8-warm-sub64-sgd": "lora8-warm-sgd",
    "lora8-warm-sub64-adam": "lora8-warm",
    "lora8-warm-sub64-adam-lr1e-2": "lora8-warm",
}
# Recipes whose warm start is another recipe's (they differ only in how the private rounds train)
WARM_LIKE = {
    "lora8-warm-lr1e-2": "lora8-warm",
    "lora8-warm-b16": "lora8-warm",
    "lora8-warm-sgd": "lora8-warm",
    "lora8-warm-sub64": "lora8-warm",
    "lora8-warm-sub64-sgd": "lora8-warm",
    "lora8-warm-sub64-adam": "lora8-warm",
    "lora8-warm-sub64-adam-lr1e-2": "lora8-warm",
}
# Recipes whose DP steps are projected onto the top N directions of the public notes' gradients
# (adaptive: scaled per coordinate there, federation.subspace)
_ADAPTIVE = {"dp_subspace": 64, "dp_subspace_adaptive": True}
SUBSPACE: dict[str, dict[str, Any]] = {
    "lora8-warm-sub64": {"dp_subspace": 64},
    "lora8-warm-sub64-sgd": {"dp_subspace": 64},
    "lora8-warm-sub64-adam": _ADAPTIVE,
    "lora8-warm-sub64-adam-lr1e-2": _ADAPTIVE,
}


def base_config(args: argparse.Namespace, recipe: str, seed: int) -> FederationConfig:
    overrides = RECIPES[recipe][0]
    settings = {"layers": "top:8", **overrides}
    return plain_config(rounds=args.rounds, min_nodes=3, seed=seed, compression="none",
                        dp_delta=DELTA, **settings)  # fmt: skip


def recipe_warm_start(
    args: argparse.Namespace, corpus: Corpus, recipe: str, seed: int
) -> dict[str, np.ndarray]:
    """The public warm start a recipe's rows start from, made with its own training settings or
    with those of the recipe `WARM_LIKE` names (cached by `privacy_lab.warm_start`)."""
    cfg = base_config(args, recipe, seed)
    like = base_config(args, WARM_LIKE.get(recipe, recipe), seed)
    warm_cfg = replace(cfg, **{k: getattr(like, k) for k in RECIPES[recipe][0]})
    return warm_start(warm_cfg, corpus.public, RECIPES[recipe][1],
                      args.state_dir / "privacy" / "warm", args.state_dir)  # fmt: skip


def run_row(args: argparse.Namespace, corpus: Corpus, recipe: str, eps: float | None, seed: int):
    """One row: resumed from its round checkpoint when an earlier invocation was cut short."""
    cfg = base_config(args, recipe, seed)
    state = args.state_dir / "privacy"
    scorer = Scorer(state / "prefix-cache")
    noise = 0.0
    if eps is not None:
        smallest = min(len(p) for p in corpus.hospitals)
        noise = noise_for(eps, DELTA, smallest, cfg)
        cfg = replace(cfg, dp=True, dp_noise_multiplier=noise, dp_epsilon_budget=eps + 1e-6)
        if recipe in SUBSPACE:  # the public notes are the warm start's
            public = write_conll(corpus.public, state / f"public-{corpus.tag}.tsv")
            cfg = replace(cfg, **SUBSPACE[recipe], dp_public_notes=str(public))
    key = f"{recipe} {eps} {seed} {corpus.tag} {args.rounds}"
    run_dir = state / "runs" / hashlib.sha256(key.encode()).hexdigest()[:12]
    checkpoint = RoundCheckpoint(run_dir / "checkpoint")
    done, arrays, meta = checkpoint.load()
    if done >= cfg.rounds:
        raise SystemExit(f"{checkpoint.directory}: holds every round but no row; remove it")
    trim_ledgers(run_dir, done)
    hospitals = range(len(corpus.hospitals))
    share_prefix_cache(state / "prefix-cache", [run_dir / f"hospital-{i}" for i in hospitals])
    if arrays is None and RECIPES[recipe][1]:
        arrays = recipe_warm_start(args, corpus, recipe, seed)
    started = time.perf_counter()

    def on_round(record: RoundRecord, global_arrays: dict[str, np.ndarray]) -> None:
        if meta["initial"] is None:  # a fresh row scored round 0 first
            meta["initial"] = scorer.scores[0]
        meta["records"].append(asdict(record))
        checkpoint.save(meta | {"seconds": meta["seconds"] + time.perf_counter() - started},
                        global_arrays)  # fmt: skip

    if done:
        print(f"  resuming after round {done}", flush=True)
    result = simulate(cfg, corpus.hospitals, corpus.test, run_dir, on_round, args.state_dir,
                      cfg.rounds, arrays, scorer, first_round=done + 1)  # fmt: skip
    final = state / "final" / f"{recipe}-eps{eps}-seed{seed}-{corpus.tag}.npz"
    final.parent.mkdir(parents=True, exist_ok=True)
    np.savez(final, **result.final_arrays)  # type: ignore[arg-type]  # the audit's target
    records = meta["records"]
    return {
        "recipe": recipe,
        "eps_target": eps,
        "seed": seed,
        "noise": noise,
        "initial_f1": meta["initial"]["f1"],
        **scorer.last,
        "eps_spent": records[-1]["eps_spent"],
        "hospitals": [len(p) for p in corpus.hospitals],
        "declined": sum(len(r["declined"]) for r in records),
        "losses": [r["losses"] for r in records],
        "clipped_share": [
            round(statistics.mean(r["dp_clipped_share"].values()), 4)
            if r.get("dp_clipped_share")
            else None
            for r in records
        ],
        "seconds": round(meta["seconds"] + time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["lora8-warm"], choices=list(RECIPES))
    parser.add_argument("--eps", nargs="+", default=["none", "8"], help="targets; none = no DP")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    add_corpus_args(parser)
    parser.add_argument("--store", type=Path, default=STORE)
    args = parser.parse_args()
    corpus = Corpus.load(args.public, args.split_seed, args.train, args.test)
    sizes = corpus.sizes(args.rounds)
    rows = RowStore(args.store, "python benchmarks/privacy.py " + shlex.join(sys.argv[1:]))
    for recipe in args.recipes:
        for seed in args.seeds:
            for raw in args.eps:
                eps = None if raw == "none" else float(raw)
                if eps is None and recipe in TWINS:
                    print(f"{recipe}: its no-DP run is {TWINS[recipe]}'s", flush=True)
                    continue
                key = f"{recipe} | eps {raw} | seed {seed} | {sizes}"
                if rows.has(key):
                    continue
                print(f"running {key}", flush=True)
                row = run_row(args, corpus, recipe, eps, seed)
                store = rows.add(key, row | {"sizes": sizes})
                print(f"  -> F1 {row['f1']:.4f} eps {row['eps_spent']}", flush=True)
                write_report(store, RECIPES, TWINS, args.store.with_suffix(".md"))


if __name__ == "__main__":
    main()
