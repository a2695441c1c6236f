"""How big the demo is: the full and the quick plan, and `--dp`'s settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from federation.config import FederationConfig


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: sentences per box, rounds, and the consortium's run config."""

    train_notes: int  # BC5CDR train sentences, split over the boxes (Dirichlet, alpha 0.5)
    heldout_notes: int  # BC5CDR devel sentences per box: promotion is decided on these
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


# LoRA r16 on the top 8 layers (the best federated setting in benchmarks/results/federation.md)
# and SecAgg+ on the server; all 3 boxes must answer each round.
_CONSORTIUM = FederationConfig(
    mode="lora",
    layers="top:8",
    lora_rank=16,
    lora_alpha=32,
    learning_rate=3e-3,
    head_learning_rate=3e-3,
    min_nodes=3,
    round_timeout_s=900.0,
    secagg=True,
    secagg_shares=3,
    secagg_threshold=2,
)
# `--dp`: sample-level DP-SGD at every box. At ~300 sentences a box it costs most of the F1
# (measured on one box, 2 epochs: F1 0.58 without, 0.26 / 0.17 with noise 0.5 / 0.7 at epsilon
# 15 / 9; see docs/results.md); clipped gradients need a 15x learning rate and bigger batches
# to move.
DP_RECIPE = {"batch_size": 32, "learning_rate": 3e-2, "head_learning_rate": 3e-2}
DP = {
    "dp": True,
    "dp_noise_multiplier": 0.7,
    "dp_max_grad_norm": 1.0,
    "dp_epsilon_budget": 16.0,
    **DP_RECIPE,
}
# Serving runs torch-fp32: an ONNX backend exports every promoted version (~30 s a box on 2
# cores) and a box's next round waits for that export (the work turn), so with `onnx-int8` an
# export lies on the demo's critical path every round (benchmarks/results/demo_3rounds_*.md).
# Two rounds at learning rate 3e-3 keep the demo within 15 minutes on a 2-core AVX2 machine
# (docs/results.md). `--backend onnx-int8` shows a box's default backend.
FULL = DemoPlan(
    train_notes=900,
    heldout_notes=50,
    federation=replace(_CONSORTIUM, rounds=2),
    backend="torch-fp32",
)
# A smoke run: one round on 4 layers with a higher learning rate, plain FedAvg, and torch-fp32
# serving (the ONNX export of a new version takes ~40 s per box on 2 cores).
QUICK = DemoPlan(
    train_notes=240,
    heldout_notes=20,
    federation=replace(
        _CONSORTIUM,
        rounds=1,
        layers="top:4",
        lora_rank=8,
        lora_alpha=16,
        learning_rate=5e-3,
        head_learning_rate=5e-3,
        secagg=False,  # its three extra message stages cost ~20 s of a 3-minute budget
    ),
    backend="torch-fp32",
    split_seed=13,
    ehr_notes=20,
)


def make_plan(
    quick: bool, rounds: int | None = None, backend: str | None = None, dp: bool = False
) -> DemoPlan:
    plan = QUICK if quick else FULL
    federation = plan.federation
    if rounds is not None:
        federation = replace(federation, rounds=rounds)
    if dp:
        federation = replace(federation, **DP)  # type: ignore[arg-type]
    return replace(plan, federation=federation, backend=backend or plan.backend)
