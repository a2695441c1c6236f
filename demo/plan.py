"""How big the demo is: the full and the quick plan, with DP-SGD or (`--no-dp`) without."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from demo.sources import WARM_START
from federation.config import FederationConfig


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: sentences per box, rounds, and the consortium's run config."""

    train_notes: int  # BC5CDR train sentences, split over the boxes (Dirichlet, alpha 0.5)
    heldout_notes: int  # BC5CDR devel sentences per box after the public ones: promotion's
    federation: FederationConfig
    backend: str = "onnx-int8"  # the serving backend of every box
    split_seed: int = 7  # seeds the Dirichlet split (7: three similar sizes, skewed labels)
    ehr_notes: int = 40  # new BC5CDR train sentences each box's simulated EHR shows and corrects
    ehr_batch: int = 20  # of them, per model version serving swaps in

    @property
    def heldout_fraction(self) -> float:
        """The share of a box's store held out: about its held-out sentences' share."""
        per_box = self.train_notes / 3 + self.heldout_notes
        return round(min(max(self.heldout_notes / per_box, 0.05), 0.5), 2)

    @property
    def rounds(self) -> int:
        return self.federation.rounds


# The federation's defaults (DP-SGD on LoRA r16 adapters of the top 8 layers, Poisson batches of
# 256) from the consortium's public warm start, and SecAgg+ on the server; all 3 boxes must
# answer each round.
_CONSORTIUM = FederationConfig(
    min_nodes=3,
    round_timeout_s=900.0,
    secagg=True,
    secagg_shares=3,
    secagg_threshold=2,
    warm_start=str(WARM_START),
)
# DP-SGD at every box, on unless `--no-dp`: the recipe benchmarks/results/privacy.md measured
# (the warm start above, Poisson batches of 256 windows). Each box calibrates its noise so that
# its budget (epsilon 8 at delta 1e-5, the defaults) lasts dp-rounds = 10 rounds; the demo
# runs the first 2 of them. `--no-dp` is the same recipe without DP (its measured twin).
# Serving runs torch-fp32: an ONNX backend exports every promoted version (~30 s a box on 2
# cores) and a box's next round waits for that export (the work turn), so with `onnx-int8` an
# export lies on the demo's critical path every round (benchmarks/results/demo_3rounds_*.md).
# `--backend onnx-int8` shows a box's default backend. 450 training sentences, ~150 a box: below
# the batch of 256, a DP round is one step over all of a box's windows (sample rate 1); at 900
# (~300 a box: rate 0.85, 2 steps) a round sampled 1.7 times the box's windows and the demo
# took 8.9 min on a 2-core EPYC, too long for 15 min on the slowest machine (docs/results.md).
FULL = DemoPlan(
    train_notes=450,
    heldout_notes=50,
    federation=replace(_CONSORTIUM, rounds=2),
    backend="torch-fp32",
)
# A smoke run: one round, fewer notes, plain FedAvg (SecAgg+'s three extra message stages cost
# ~20 s of a 3-minute budget).
QUICK = DemoPlan(
    train_notes=240,
    heldout_notes=20,
    federation=replace(_CONSORTIUM, rounds=1, secagg=False),
    backend="torch-fp32",
    split_seed=13,
    ehr_notes=20,
)


def make_plan(
    quick: bool, rounds: int | None = None, backend: str | None = None, dp: bool = True
) -> DemoPlan:
    plan = QUICK if quick else FULL
    federation = replace(plan.federation, dp=dp)
    if rounds is not None:
        federation = replace(federation, rounds=rounds)
    return replace(plan, federation=federation, backend=backend or plan.backend)


def describe(cfg: FederationConfig) -> str:
    """One line on the rounds the consortium runs: start, layers, aggregation, privacy."""
    start = f"the public warm start ({Path(cfg.warm_start).name})" if cfg.warm_start else (
        "the seeded start")  # fmt: skip
    secure = f"SecAgg+ ({cfg.secagg_shares} shares)" if cfg.secagg else "plain FedAvg"
    privacy = "DP-SGD off (--no-dp)"
    if cfg.dp:
        noise = f"noise {cfg.dp_noise_multiplier:g}"
        if not cfg.dp_noise_multiplier:
            noise = f"each box's noise calibrated so that its budget lasts {cfg.dp_rounds} rounds"
        privacy = (f"DP-SGD (budget epsilon {cfg.dp_epsilon_budget:g} at delta {cfg.dp_delta:g} "
                   f"per box, {noise})")  # fmt: skip
    return (f"{cfg.rounds} round(s) from {start}: LoRA r{cfg.lora_rank} on {cfg.layers}, "
            f"{secure}, {privacy}")  # fmt: skip
