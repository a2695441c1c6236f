"""The experiments on BC5CDR, each writing a markdown table and PNG plots to results/.

    .venv/bin/python benchmarks/experiments.py a b c d e f [--train-notes N] [--rounds R]

a  centralized vs federated (IID and non-IID) vs each hospital alone
b  selected layers 2 / 4 / 8 / 16 / all: F1 against megabytes exchanged
c  layer-skipping vs LoRA vs full-model FedAvg
d  epsilon sweep (inf, 16, 8, 4, 1) at delta 1e-5
e  10 rounds vs 100 rounds with a tenth of the local steps per round
f  a hospital joining late with 5% of the data: consortium model vs training alone
g  a sentence-level task beside NER (appliance.sentence_task), trained the same federated way

Hospitals run in process (`federation.simulation`: the same node and aggregation code as the
Flower apps). Runs are stored in results/experiments.json by a key of their settings, so an
experiment that needs a run another one made reuses it. Sizes are small for 2 cores; every
table states them.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.notes import Note  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from benchmarks.core import machine  # noqa: E402
from benchmarks.experiments_report import write_experiment  # noqa: E402
from benchmarks.recipes import plain_config  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.partition import partition  # noqa: E402

# Experiment d's DP rows: the larger batches and rates DP-SGD needed at a few hundred sentences a
# hospital from the seeded start (measured on one box: docs/results.md, experiment d)
DP_RECIPE = {"batch_size": 32, "learning_rate": 3e-2, "head_learning_rate": 3e-2}

DATA = ROOT / "data" / "bc5cdr"
STORE = ROOT / "benchmarks" / "results" / "experiments.json"
LORA = {"mode": "lora", "lora_rank": 16, "lora_alpha": 32, "learning_rate": 2e-3,
        "head_learning_rate": 2e-3}  # fmt: skip


class Lab:
    """Data, settings and the run store shared by the experiments of one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.train = read_notes(str(DATA / "train.tsv")).notes[: args.train_notes]
        self.test = read_notes(str(DATA / "test.tsv")).notes[: args.test_notes]
        self.spare = read_notes(str(DATA / "train.tsv")).notes[args.train_notes :]
        self.store: dict[str, Any] = json.loads(STORE.read_text()) if STORE.exists() else {}
        self.store.setdefault("runs", {})
        self.store.setdefault("experiments", {})
        self.base = plain_config(rounds=args.rounds, layers="top:8", min_nodes=3)

    def split(self, scheme: str) -> list[list[Note]]:
        return partition(self.train, 3, scheme, alpha=0.5, seed=self.args.split_seed)

    def save(self) -> None:
        """Merge into the store on disk (another invocation may be adding runs), then write."""
        on_disk = json.loads(STORE.read_text()) if STORE.exists() else {}
        for part in ("runs", "experiments"):
            self.store[part] = {**on_disk.get(part, {}), **self.store[part]}
        tmp = STORE.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.store, indent=2), encoding="utf-8")
        tmp.replace(STORE)

    def cached(self, key: str, make: Any) -> dict[str, Any]:
        """The stored run for `key` (settings included in it), or make, store and return it."""
        full = f"{key} | train {self.args.train_notes} test {self.args.test_notes}"
        if full not in self.store["runs"]:
            started = time.perf_counter()
            print(f"running {full}", flush=True)
            row = make()
            row["seconds"] = round(time.perf_counter() - started, 1)
            self.store["runs"][full] = row
            self.save()
            print(f"  -> {_brief(row)}", flush=True)
        return dict(self.store["runs"][full])

    def federated(self, cfg: FederationConfig, scheme: str, score_every: int = 1) -> dict[str, Any]:
        from benchmarks.experiments_local import settings_key
        from federation.simulation import simulate

        key = f"federated {scheme} {settings_key(cfg)}"

        def make() -> dict[str, Any]:
            state = self.args.state_dir / "experiments" / scheme
            for spent in [*state.glob("*/privacy-ledger.json"), *state.glob("*/topk-residual.npz")]:
                spent.unlink()  # every run starts with a fresh privacy budget and no residual
            result = simulate(cfg, self.split(scheme), self.test, state, None,
                              self.args.state_dir, score_every)  # fmt: skip
            rounds = [r for r in result.as_dict()["rounds"]]
            return {
                "f1_per_round": [
                    None if math.isnan(r["test_f1"]) else r["test_f1"] for r in rounds
                ],  # fmt: skip
                "bytes_per_round": [
                    sum(r["bytes_up"].values()) + sum(r["bytes_down"].values()) for r in rounds
                ],  # fmt: skip
                "eps_spent": max(
                    (max(r["eps_spent"].values(), default=0.0) for r in rounds), default=0.0
                ),  # fmt: skip
                "declined": sum(len(r["declined"]) for r in rounds),
            }

        return self.cached(key, make)

    def local(self, notes: list[Note], name: str, epochs: int, spec: str = "top:8",
              init: dict[str, Any] | None = None, task: str = "ner") -> dict[str, Any]:  # fmt: skip
        from benchmarks.experiments_local import train_and_score

        key = f"local {name} {spec} epochs {epochs}" + ("" if task == "ner" else f" task {task}")
        return self.cached(
            key,
            lambda: train_and_score(
                self.args.state_dir, spec, notes, self.test, epochs, init, task
            ),
        )


def _brief(row: dict[str, Any]) -> str:
    f1 = row.get("f1_per_round") or [row.get("f1")]
    return f"F1 {[round(x, 3) for x in f1 if x is not None][-3:]}"


def _final(row: dict[str, Any]) -> float:
    scores = [x for x in row.get("f1_per_round", [row.get("f1")]) if x is not None]
    return float(scores[-1])


def exp_a(lab: Lab) -> dict[str, Any]:
    rounds, rows = lab.args.rounds, []
    central = lab.local(lab.train, "centralized", rounds)
    rows.append({"setting": "centralized (all notes in one place)", "f1": central["f1"]})
    for scheme in ("iid", "dirichlet"):
        run = lab.federated(lab.base, scheme)
        rows.append({"setting": f"federated, {scheme}", "f1": _final(run),
                     "f1_per_round": run["f1_per_round"]})  # fmt: skip
    for i, notes in enumerate(lab.split("dirichlet")):
        alone = lab.local(notes, f"dirichlet-hospital-{i}", rounds)
        rows.append({"setting": f"hospital {i} alone ({len(notes)} notes)", "f1": alone["f1"]})
    return {"rows": rows, "centralized": central["f1"]}


def exp_b(lab: Lab) -> dict[str, Any]:
    rows = []
    for spec in ("top:2", "top:4", "top:8", "top:16", "all"):
        run = lab.federated(replace(lab.base, layers=spec), "dirichlet")
        rows.append({"setting": spec, "f1": _final(run), "mb": sum(run["bytes_per_round"]) / 1e6,
                     "f1_per_round": run["f1_per_round"]})  # fmt: skip
    return {"rows": rows}


def exp_c(lab: Lab) -> dict[str, Any]:
    runs = {
        "layer-skipping (top:8)": lab.base,
        "LoRA r16 on top:8": replace(lab.base, **LORA),  # type: ignore[arg-type]
        "full-model FedAvg": replace(lab.base, mode="full", learning_rate=1e-4),
    }
    rows = []
    for name, cfg in runs.items():
        run = lab.federated(cfg, "dirichlet")
        rows.append({"setting": name, "f1": _final(run), "mb": sum(run["bytes_per_round"]) / 1e6,
                     "f1_per_round": run["f1_per_round"]})  # fmt: skip
    return {"rows": rows}


def exp_d(lab: Lab) -> dict[str, Any]:
    """No DP with our best recipe, then each epsilon with a DP recipe (larger batches and rate,
    as DP-SGD needs), and the first try: epsilon 16 with the no-DP recipe."""
    rows = [_dp_row(lab, "no DP (LoRA r16, batch 16, lr 2e-3)", math.inf, {})]
    for eps in (16.0, 8.0, 4.0, 1.0):
        rows.append(_dp_row(lab, f"epsilon {eps:g}", eps, DP_RECIPE))
    rows.append(_dp_row(lab, "epsilon 16 with the no-DP recipe", 16.0, {}) | {"plot": False})
    return {"rows": rows}


def _dp_row(lab: Lab, name: str, eps: float, recipe: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.experiments_local import noise_for

    cfg = replace(lab.base, **(LORA | recipe))  # type: ignore[arg-type]
    if math.isfinite(eps):
        smallest = min(len(p) for p in lab.split("dirichlet"))
        noise = noise_for(eps, 1e-5, smallest, cfg)
        cfg = replace(cfg, dp=True, dp_noise_multiplier=noise,
                      dp_epsilon_budget=eps * 1.001)  # fmt: skip
    run = lab.federated(cfg, "dirichlet")
    return {"setting": name, "target_eps": None if math.isinf(eps) else eps, "f1": _final(run),
            "eps_spent": run["eps_spent"], "declined": run["declined"],
            "noise": cfg.dp_noise_multiplier if cfg.dp else 0.0,
            "f1_per_round": run["f1_per_round"]}  # fmt: skip


def exp_e(lab: Lab) -> dict[str, Any]:
    short = replace(lab.base, rounds=100, local_fraction=0.1)
    rows = []
    for name, cfg, every in (("10 rounds x 1 epoch", replace(lab.base, rounds=10), 1),
                             ("100 rounds x 0.1 epoch", short, 10)):  # fmt: skip
        run = lab.federated(cfg, "dirichlet", score_every=every)
        rows.append({"setting": name, "f1": _final(run), "mb": sum(run["bytes_per_round"]) / 1e6,
                     "f1_per_round": run["f1_per_round"]})  # fmt: skip
    return {"rows": rows}


def exp_f(lab: Lab) -> dict[str, Any]:
    from benchmarks.experiments_local import consortium_arrays

    newcomer = lab.spare[: max(1, lab.args.train_notes // 20)]  # 5% of the consortium's notes
    epochs = lab.args.rounds
    alone = lab.local(newcomer, "newcomer-5pct", epochs)
    arrays = consortium_arrays(lab.args.state_dir, lab.base, lab.split("dirichlet"), lab.test)
    as_is = lab.local([], "newcomer consortium model as is", 0, init=arrays)
    tuned = lab.local(newcomer, "newcomer consortium model + local epochs", epochs, init=arrays)
    rows = [
        {"setting": f"newcomer alone ({len(newcomer)} notes, {epochs} epochs)", "f1": alone["f1"]},
        {"setting": "consortium model, unchanged", "f1": as_is["f1"]},
        {"setting": f"consortium model + {epochs} local epochs", "f1": tuned["f1"]},
    ]
    return {"rows": rows}


def exp_g(lab: Lab) -> dict[str, Any]:
    from appliance.sentence_task import sentence_label, sentence_scores
    from benchmarks.experiments_local import consortium_arrays, ner_then_rule

    rounds, task = lab.args.rounds, "sentence"
    gold = [sentence_label(n) for n in lab.test]
    rows: list[dict[str, Any]] = [
        {"setting": "always 'no' (majority class)", **sentence_scores(gold, [0] * len(gold))}
    ]
    central = lab.local(lab.train, "centralized", rounds, task=task)
    rows.append({"setting": "centralized classifier", **_scores(central)})
    for scheme in ("iid", "dirichlet"):
        run = lab.federated(replace(lab.base, task=task), scheme)
        rows.append({"setting": f"federated classifier, {scheme}", "f1": _final(run),
                     "f1_per_round": run["f1_per_round"]})  # fmt: skip
    for i, notes in enumerate(lab.split("dirichlet")):
        alone = lab.local(notes, f"dirichlet-hospital-{i}", rounds, task=task)
        rows.append({"setting": f"hospital {i} alone ({len(notes)} notes)", **_scores(alone)})
    arrays = consortium_arrays(lab.args.state_dir, lab.base, lab.split("dirichlet"), lab.test)
    rule = lab.cached(
        "sentence task: federated NER model + the rule",
        lambda: ner_then_rule(lab.args.state_dir, lab.base, arrays, lab.test),
    )
    rows.append({"setting": "federated NER model (a, Dirichlet) + the rule", **_scores(rule)})
    return {"rows": rows, "positives": sum(gold), "test": len(gold),
            "train_positives": sum(sentence_label(n) for n in lab.train)}  # fmt: skip


def _scores(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("f1", "precision", "recall", "accuracy") if k in row}


EXPERIMENTS = {"a": exp_a, "b": exp_b, "c": exp_c, "d": exp_d, "e": exp_e, "f": exp_f, "g": exp_g}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("which", nargs="*", help=f"experiments to run: {' '.join(EXPERIMENTS)}")
    parser.add_argument("--render", action="store_true", help="only rewrite stored results")
    parser.add_argument("--train-notes", type=int, default=300, help="split over 3 hospitals")
    parser.add_argument("--test-notes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=7)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/state"))
    args = parser.parse_args()
    unknown = sorted(set(args.which) - set(EXPERIMENTS))
    if unknown or not (args.which or args.render):
        parser.error(f"choose experiments from {' '.join(EXPERIMENTS)} (got {unknown or 'none'})")
    if args.render:
        stored = json.loads(STORE.read_text())["experiments"] if STORE.exists() else {}
        for letter, result in sorted(stored.items()):
            write_experiment(letter, result)
        return
    lab = Lab(args)
    command = "python benchmarks/experiments.py " + shlex.join(sys.argv[1:])
    for letter in args.which:
        result = EXPERIMENTS[letter](lab)
        settings = {k: str(v) for k, v in vars(args).items() if k != "which"}
        result.update(
            command=command, machine=machine(), date=time.strftime("%Y-%m-%d"), settings=settings
        )
        lab.store["experiments"][letter] = result
        lab.save()
        write_experiment(letter, result)


if __name__ == "__main__":
    main()
