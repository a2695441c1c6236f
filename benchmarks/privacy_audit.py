"""An empirical privacy audit of the federated global model: membership inference and canaries.

The targets are the global models `benchmarks/privacy.py` saved for one recipe and seed, with DP
off and at the audited epsilon. Members are hospital-0's real training notes; non-members as
many test notes (BC5CDR splits by abstract, so both come from one distribution). Two attacks
score each note, higher meaning "member":

- loss threshold: minus the note's mean per-word loss under the global model;
- calibrated (LiRA offline, fixed variance): that signal minus its mean under reference models
  that never saw the note: the public warm start and shadow models trained, without DP, on
  random halves of development sentences no hospital holds. A note that is easy for every
  model is not mistaken for a member.

Reported: ROC AUC and the true-positive rate at 1% false positives. Canaries: hospital-0 holds
8 synthetic notes once and 8 four times (`privacy_lab.planted`); each one's exposure is
log2(1001) minus log2 of its loss rank among itself and 1,000 notes of the same template that
no hospital holds (1.44 on average for a random rank, 9.97 for the first). Run from the
repository root after the privacy rows it audits:

    .venv/bin/python benchmarks/privacy_audit.py --recipe lora8-warm --seed 1 --targets none 8
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.privacy import RECIPES, base_config, recipe_warm_start  # noqa: E402
from benchmarks.privacy_lab import (  # noqa: E402
    CANARIES,
    Corpus,
    Scorer,
    add_corpus_args,
    canary,
    candidates,
)
from benchmarks.rows import RowStore  # noqa: E402
from federation.task import HospitalNode  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "privacy_audit.md"
PRIVACY_STORE = ROOT / "benchmarks" / "results" / "privacy.json"
WARM = "public warm start (control: saw no member)"
Arrays = dict[str, np.ndarray]


def attack_scores(member: np.ndarray, outsider: np.ndarray) -> dict[str, float]:
    """ROC AUC and TPR at 1% FPR of scores where higher means member."""
    truth = np.r_[np.ones(len(member)), np.zeros(len(outsider))]
    scores = np.r_[member, outsider]
    fpr, tpr, _ = roc_curve(truth, scores)
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
    }


def exposures(planted: np.ndarray, others: np.ndarray) -> list[float]:
    """Each planted canary's exposure from its loss rank among itself and `others`."""
    total = len(others) + 1
    ranks = [1 + int(np.sum(others < loss)) for loss in planted]
    return [math.log2(total) - math.log2(rank) for rank in ranks]


def shadow(
    cfg: Any, warm: Arrays, pool: list, k: int, epochs: int, state: Path, bases: Path
) -> Arrays:
    """A reference model: the warm start trained without DP on a seeded half of `pool`
    (cached as .npz)."""
    path = state / f"shadow-{k}-{epochs}-{len(pool)}-{cfg.lora_rank}-{cfg.learning_rate}.npz"
    if path.exists():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    pick = np.random.default_rng(1000 + k).permutation(len(pool))[: len(pool) // 2]
    local = replace(cfg, dp=False, local_epochs=epochs, rounds=1, seed=cfg.seed + 100 * k)
    node = HospitalNode.load(local, [pool[i] for i in sorted(pick)], state / f"shadow-{k}",
                             f"shadow-{k}", bases_dir=bases)  # fmt: skip
    arrays = node.train_round(warm, 1).payload
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return arrays


def audit(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One row per target in `args.targets` ("none" or an epsilon), keyed for the store."""
    corpus = Corpus.load(args.public, args.split_seed, args.train, args.test)
    cfg = base_config(args, args.recipe, args.seed)
    state = args.state_dir / "privacy"
    paths: dict[str, tuple[float | None, Path | None]] = {}
    for raw in args.targets:
        if raw == "warm":  # never saw a hospital's note: what the attacks get from no membership
            paths[WARM] = (None, None)
            continue
        eps = None if raw == "none" else float(raw)
        path = state / "final" / f"{args.recipe}-eps{eps}-seed{args.seed}-{corpus.tag}.npz"
        if not path.exists():
            raise SystemExit(f"{path}: no global model; run benchmarks/privacy.py for it first")
        paths["no DP" if eps is None else f"epsilon {eps:g}"] = (eps, path)
    warm = recipe_warm_start(args, corpus, args.recipe, args.seed)
    pool = corpus.pool[: args.pool or None]
    references = [warm] + [
        shadow(cfg, warm, pool, k, args.shadow_epochs, state / "shadows", args.state_dir)
        for k in range(args.shadows)
    ]
    host = HospitalNode.load(cfg, [], state / "audit", "audit", bases_dir=args.state_dir)
    scorer = Scorer(state / "prefix-cache")
    members, outsiders = corpus.members, corpus.test[: len(corpus.members)]
    planted = [canary(i) for i in range(2 * CANARIES)]
    sets = {"members": members, "outsiders": outsiders, "planted": planted,
            "candidates": candidates()}  # fmt: skip
    reference_loss = {
        name: np.mean([scorer.losses(host, ref, sets[name]) for ref in references], axis=0)
        for name in ("members", "outsiders")
    }
    rows = {}
    for name, (eps, path) in paths.items():
        started = time.perf_counter()
        if path is None:
            target = warm
        else:
            with np.load(path) as data:
                target = {key: data[key] for key in data.files}
        loss = {n: scorer.losses(host, target, notes) for n, notes in sets.items()}
        calibrated = {n: reference_loss[n] - loss[n] for n in reference_loss}
        exposure = exposures(loss["planted"], loss["candidates"])
        key = f"{args.recipe} | seed {args.seed} | {name} | {corpus.tag}"
        rows[key] = {
            "recipe": args.recipe,
            "seed": args.seed,
            "target": name,
            "eps_target": eps,
            "test_f1": _test_f1(args, eps, corpus) if path else None,
            "public": len(corpus.public),
            "members": len(members),
            "references": f"warm start + {args.shadows} shadows x {args.shadow_epochs} epochs "
            f"on {len(pool) // 2} of {len(pool)} development sentences",
            "loss": attack_scores(-loss["members"], -loss["outsiders"]),
            "calibrated": attack_scores(calibrated["members"], calibrated["outsiders"]),
            "exposure_once": exposure[:CANARIES],
            "exposure_4x": exposure[CANARIES:],
            "seconds": round(time.perf_counter() - started, 1),
        }
    return rows


def _test_f1(args: argparse.Namespace, eps: float | None, corpus: Corpus) -> float | None:
    """The audited model's strict test F1, from the privacy benchmark's row for it (the same
    recipe, seed, epsilon and sizes: hospitals, public part, test set, rounds)."""
    store = json.loads(PRIVACY_STORE.read_text()) if PRIVACY_STORE.exists() else {}
    wanted = (args.recipe, args.seed, eps, corpus.sizes(args.rounds))
    for row in store.get("rows", {}).values():
        if (row["recipe"], row["seed"], row["eps_target"], row.get("sizes")) == wanted:
            return float(row["f1"])
    return None


def write(store: dict[str, Any], path: Path) -> None:
    rows = list(store.get("rows", {}).values())
    lines = [
        "# Privacy audit: membership inference and canary exposure against the global model",
        "",
        "Commands (from the repository root, `.venv/bin/python`):",
        "",
        *[f"    {c}" for c in sorted({r["command"] for r in rows})],
        "",
        "Machines: " + "; ".join(sorted({f"{r['machine']} ({r['date']})" for r in rows})),
        "",
        "Targets: the global models `benchmarks/privacy.py` saved (sizes in privacy.md). "
        "Members: hospital-0's real training notes; non-members: as many test notes. The "
        "calibrated attack subtracts each note's mean loss under reference models that never "
        "saw it (column `references`). Exposure: log2(1001) - log2(rank): 1.44 on average "
        "for a rank drawn at random, 9.97 for the top rank. AUC 0.5 and TPR 0.01 at 1% FPR are "
        "what guessing gets. The public warm start never saw a member: what the attacks get "
        "against it comes from the difference between training and test sentences (and, for "
        "the calibrated attack, from it being one of the references), not from membership.",
        "",
        "| recipe | warm start's public sentences | seed | target | test strict F1 "
        "| loss attack AUC | TPR at 1% FPR | calibrated attack AUC | TPR at 1% FPR "
        "| canary exposure, planted once (mean / max) | planted 4 times (mean / max) "
        "| references |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {WARM: 0, "no DP": 1}

    def place(r: dict[str, Any]) -> tuple:
        return r["recipe"], r["public"], r["seed"], order.get(r["target"], 2), r["eps_target"] or 0

    for r in sorted(rows, key=place):
        once, four = r["exposure_once"], r["exposure_4x"]
        f1 = "-" if r["test_f1"] is None else f"{r['test_f1']:.4f}"
        lines.append(
            f"| {r['recipe']} | {r['public']:,} | {r['seed']} | {r['target']} | {f1} "
            f"| {r['loss']['auc']:.3f} "
            f"| {r['loss']['tpr_at_1pct_fpr']:.3f} | {r['calibrated']['auc']:.3f} "
            f"| {r['calibrated']['tpr_at_1pct_fpr']:.3f} "
            f"| {np.mean(once):.2f} / {max(once):.2f} | {np.mean(four):.2f} / {max(four):.2f} "
            f"| {r['references']} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="lora8-warm", choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", nargs="+", default=["none", "8"],
                        help="the privacy rows audited: none (no DP), their epsilon, or warm "
                             "(the public warm start, a control)")  # fmt: skip
    add_corpus_args(parser)
    parser.add_argument(
        "--shadows", type=int, default=2, help="shadow models beside the warm start"
    )
    parser.add_argument("--shadow-epochs", type=int, default=3)
    parser.add_argument("--pool", type=int, default=0, help="shadow pool sentences (0: all)")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    command = "python benchmarks/privacy_audit.py " + shlex.join(sys.argv[1:])
    rows = RowStore(args.output.with_suffix(".json"), command)
    for key, row in audit(args).items():
        rows.add(key, row)
    write(rows.read(), args.output)
    print(args.output.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
