"""Sample-level DP-SGD with Opacus at each hospital, and the hospital's persistent privacy ledger.

A "sample" is one training window (a BC5CDR note is one sentence, so one window). DP-SGD runs
on the trainable part only: with the frozen prefix cached, per-sample gradients are needed for
the selected layers and the head alone. Opacus' RDP accountant turns the steps taken (noise
multiplier, Poisson sample rate, count) into ε at the ledger's δ.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import (
    DPOptimizer,
    DPOptimizerFastGradientClipping,
    DPPerLayerOptimizer,
)
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

if TYPE_CHECKING:
    from federation.subspace import Subspace

Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps): Opacus' history entry
# The range calibrated noise multipliers are searched in (dp-noise-multiplier 0)
NOISE_FLOOR, NOISE_CEILING = 0.3, 1000.0


def epsilon_of(history: Sequence[Step], delta: float) -> float:
    """ε after `history` at `delta`, from Opacus' RDP accountant (0 with no steps)."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [tuple(step) for step in history]  # type: ignore[misc]
    return float(accountant.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """One hospital's privacy spend, persisted as JSON; survives restarts of the node."""

    path: Path
    epsilon_budget: float
    delta: float = 1e-5
    history: list[Step] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, epsilon_budget: float, delta: float) -> PrivacyLedger:
        """Resume the ledger at `path` (δ is fixed once spent), or start an empty one."""
        if not path.exists():
            return cls(path, epsilon_budget, delta)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            history = [(float(n), float(q), int(s)) for n, q, s in raw["history"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: unreadable privacy ledger ({err}); refusing to guess the privacy spent"
            ) from err
        if history and float(raw["delta"]) != delta:
            raise ValueError(f"{path}: ledger spent at delta {raw['delta']}, config asks {delta}")
        return cls(path, epsilon_budget, delta, history, list(raw.get("rounds", [])))

    @property
    def epsilon_spent(self) -> float:
        return epsilon_of(self.history, self.delta)

    @property
    def epsilon_remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.epsilon_spent)

    def projected(self, step: Step) -> float:
        """ε the ledger would show after `step` more."""
        return epsilon_of([*self.history, step], self.delta)

    def calibrated_noise(self, sample_rate: float, steps: int, rounds_left: int) -> float:
        """The smallest noise multiplier (to 0.1%) at which `rounds_left` more rounds of `steps`
        steps at `sample_rate` bring the spend to at most the budget: each round spends its
        share of what is left. NOISE_CEILING when even that spends too much (the budget is
        gone, and the round will be declined)."""
        rounds_left = max(1, rounds_left)

        def fits(noise: float) -> bool:
            step = (noise, sample_rate, steps * rounds_left)  # RDP composes: one entry
            return self.projected(step) <= self.epsilon_budget

        low, high = NOISE_FLOOR, NOISE_CEILING
        if fits(low) or not fits(high):
            return low if fits(low) else high
        while high / low > 1.001:  # bisect on a log scale: fits(high), not fits(low)
            middle = math.sqrt(low * high)
            low, high = (low, middle) if fits(middle) else (middle, high)
        return high

    def commit(self, server_round: int, step: Step) -> float:
        """Record a round's steps and save atomically; returns ε spent."""
        self.history.append(step)
        spent = self.epsilon_spent
        self.rounds.append(
            {
                "round": server_round,
                "noise": step[0],
                "sample_rate": step[1],
                "steps": step[2],
                "epsilon": spent,
            }
        )
        self.save()
        return spent

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "accountant": "rdp (opacus)",
            "epsilon_spent": self.epsilon_spent,
            "history": [list(step) for step in self.history],
            "rounds": self.rounds,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)


class DPSGDPolicy:
    """The Trainer's step policy for DP-SGD: Poisson batches, per-sample clipping, Gaussian noise.

    Per-sample gradients come from Opacus' GradSampleModule hooks on the trainable modules (its
    functorch fallback covers Llama's RMSNorm); the optimizer is Opacus' DPOptimizer, or its
    DPPerLayerOptimizer with `clipping = "per-layer"` (each tensor clipped to its share of the
    norm, so a tensor with large gradients cannot crowd out the others' signal). With
    `clipping = "ghost"` the clipping is flat but no per-sample gradient is stored: Opacus'
    ghost clipping takes each window's gradient norm from the layers' inputs and output
    gradients, then a second backward pass of the windows' losses, each scaled by its clipping
    factor, sums the clipped gradients (the same step as "flat", for one more backward). A Poisson
    batch larger than the trainer's micro-batch is computed in parts whose clipped per-sample
    gradients are summed (Opacus' skipped steps) before the one noisy step; with a `subspace`
    (federation.subspace) the noisy gradient is projected onto it before the step. Every per-sample
    gradient's norm before clipping is kept for the round (`clipping_stats`): the share that was
    clipped is what `dp_max_grad_norm` is tuned by.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        noise: float,
        max_grad_norm: float,
        batch_size: int,
        gen: torch.Generator,
        clipping: str = "flat",
        subspace: Subspace | None = None,
    ) -> None:
        self.model, self.noise, self.max_grad_norm = model, noise, max_grad_norm
        self.clipping, self.subspace = clipping, subspace
        self.batch_size, self.gen = batch_size, gen
        self.steps_taken = 0
        self.sample_rate = 0.0
        self.norms: list[float] = []
        self._wrapper: GradSampleModule | GradSampleModuleFastGradientClipping | None = None
        self._optimizer: DPOptimizer | None = None

    @staticmethod
    def planned(windows: int, batch_size: int, epochs: int) -> tuple[float, int]:
        """(sample rate, steps) a round of `epochs` over `windows` takes."""
        return min(1.0, batch_size / windows), epochs * -(-windows // batch_size)

    def prepare(self, optimizer: torch.optim.Optimizer, windows: int) -> torch.optim.Optimizer:
        self.sample_rate = min(1.0, self.batch_size / windows)
        common = {
            "noise_multiplier": self.noise,
            "expected_batch_size": self.batch_size,
            "loss_reduction": "mean",
            "generator": None,
        }
        dp: DPOptimizer
        if self.clipping == "ghost":
            self._wrapper = GradSampleModuleFastGradientClipping(
                self.model, batch_first=True, loss_reduction="mean",
                max_grad_norm=self.max_grad_norm, use_ghost_clipping=True,
            )  # fmt: skip
            dp = DPOptimizerFastGradientClipping(
                optimizer, max_grad_norm=self.max_grad_norm, **common
            )
        elif self.clipping == "per-layer":  # the same total norm, split evenly over the tensors
            self._wrapper = GradSampleModule(self.model, batch_first=True, loss_reduction="mean")
            count = sum(p.requires_grad for g in optimizer.param_groups for p in g["params"])
            share = self.max_grad_norm / math.sqrt(count)
            dp = DPPerLayerOptimizer(optimizer, max_grad_norm=[share] * count, **common)
        else:
            self._wrapper = GradSampleModule(self.model, batch_first=True, loss_reduction="mean")
            dp = DPOptimizer(optimizer, max_grad_norm=self.max_grad_norm, **common)
        dp.attach_step_hook(self._after_noise)
        self._optimizer = dp
        return dp

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | float) -> None:
        """One micro-batch's backward pass from its windows' own losses. Ghost clipping scales
        each window's loss by its clipping factor, so a term outside them is refused (the
        federation refuses FedProx with DP; Opacus would drop its gradient in any mode)."""
        if not isinstance(self._wrapper, GradSampleModuleFastGradientClipping):
            (losses.mean() + extra).backward()
            return
        if isinstance(extra, torch.Tensor):
            raise ValueError("ghost clipping: an extra loss term has no per-window gradient")
        if not isinstance(self._optimizer, DPOptimizerFastGradientClipping):
            raise TypeError("ghost clipping needs the optimizer `prepare` returned")
        DPTensorFastGradientClipping(self._wrapper, self._optimizer, losses, "mean").backward()

    def _after_noise(self, _: DPOptimizer) -> None:
        """A batch's last micro-batch is clipped and the noise added: keep the norms, and project
        the noisy gradient onto the public subspace when there is one (post-processing)."""
        self._observe()
        if self.subspace is not None:
            self.subspace.project()

    def _observe(self) -> None:
        """Keep the norms of the per-sample gradients about to be (or just) clipped."""
        if isinstance(self._wrapper, GradSampleModuleFastGradientClipping):
            self.norms.extend(self._wrapper.per_sample_gradient_norms.tolist())
            return
        squared: torch.Tensor | None = None
        for param in self.model.parameters():
            sample = getattr(param, "grad_sample", None)
            if param.requires_grad and isinstance(sample, torch.Tensor):
                part = sample.flatten(1).float().pow(2).sum(1)
                squared = part if squared is None else squared + part
        if squared is not None:
            self.norms.extend(squared.sqrt().tolist())

    def clipping_stats(self) -> dict[str, float]:
        """The round's per-sample gradient norms before clipping: the share above
        `max_grad_norm` (clipped) and the median; empty before any step."""
        if not self.norms:
            return {}
        norms = torch.tensor(self.norms)
        return {
            "dp_clipped_share": round(float((norms > self.max_grad_norm).float().mean()), 4),
            "dp_median_grad_norm": round(float(norms.median()), 4),
        }

    def batches(
        self, lengths: Sequence[int], batch_size: int, gen: torch.Generator
    ) -> list[list[int]]:
        count = len(lengths)
        steps = -(-count // batch_size)
        draws = torch.rand((steps, count), generator=self.gen) < self.sample_rate
        return [torch.nonzero(row).flatten().tolist() for row in draws]

    def after_step(self) -> None:
        self.steps_taken += 1

    def accumulate(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip this micro-batch's per-sample gradients into the batch's sum and clear them;
        the batch's last `optimizer.step` adds the noise once and takes the step."""
        if not isinstance(optimizer, DPOptimizer):
            raise TypeError("DP-SGD micro-batches need the DPOptimizer `prepare` returned")
        self._observe()
        optimizer.signal_skip_step(do_skip=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def finish(self) -> None:
        if self._wrapper is not None:
            self._wrapper.to_standard_module()  # removes its hooks and per-sample state
            self._wrapper = self._optimizer = None
        for param in self.model.parameters():
            if hasattr(param, "grad_sample"):
                param.grad_sample = None
