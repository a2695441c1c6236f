"""The federation's typed config, and the one place Flower's run config is converted into it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MODES = ("layers", "lora", "full")
TASKS = ("ner", "sentence")
COMPRESSIONS = ("none", "fp16", "bf16", "int8", "topk")
STRATEGIES = ("fedavg", "fedprox")
LR_SCHEDULES = ("constant", "cosine")
CLIENT_DP = ("none", "client-fixed")


@dataclass(frozen=True)
class FederationConfig:
    """What a consortium run does. Defaults mirror `[tool.flwr.app.config]` in pyproject.toml."""

    base: str = "embedded"  # the base every hospital has on disk ("embedded": SmolLM2-135M)
    attention: str = "bidirectional-trained"
    labels: tuple[str, ...] = ("Chemical", "Disease")
    task: str = "ner"  # ner | sentence (appliance.sentence_task; trains, scores, not served)
    mode: str = "layers"  # layers | lora | full
    layers: str = "top:8"  # which layers train and travel (full mode: all)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    rounds: int = 3
    local_epochs: int = 1
    local_fraction: float = 1.0  # < 1: each round trains on a rotating share of the local notes
    batch_size: int = 16
    learning_rate: float = 3e-4
    head_learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine: both rates decay over the run's rounds
    lr_min_fraction: float = 0.1  # cosine: the last round's rates, as a fraction of the first's
    max_tokens: int = 256
    context_tokens: int = 32
    seed: int = 13
    strategy: str = "fedavg"  # fedavg | fedprox
    proximal_mu: float = 0.01
    fraction_train: float = 1.0
    min_nodes: int = 2
    round_timeout_s: float = 3600.0
    compression: str = "none"  # none | fp16 | bf16 | int8 | topk
    int8_block: int = 64
    topk_fraction: float = 0.01
    update_norm_bound: float = 1e4  # the server drops an update whose L2 delta norm is larger
    dp: bool = False  # sample-level DP-SGD (Opacus) at each hospital
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_epsilon_budget: float = 8.0
    dp_delta: float = 1e-5
    client_dp: str = "none"  # none | client-fixed (Flower's client-side fixed clipping)
    client_dp_noise: float = 0.1
    client_dp_clip: float = 10.0
    secagg: bool = False  # SecAgg+: the server only sees the sum of the updates
    secagg_shares: int = 3
    secagg_threshold: int = 2
    secagg_clip: float = 8.0  # SecAgg+ clipping range of each (weighted) parameter

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        _one_of("mode", self.mode, MODES)
        _one_of("task", self.task, TASKS)
        _one_of("compression", self.compression, COMPRESSIONS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("client-dp", self.client_dp, CLIENT_DP)
        _positive(
            self,
            "rounds",
            "local_epochs",
            "batch_size",
            "max_tokens",
            "lora_rank",
            "int8_block",
            "min_nodes",
            "round_timeout_s",
            "learning_rate",
            "head_learning_rate",
            "update_norm_bound",
            "dp_noise_multiplier",
            "dp_max_grad_norm",
            "dp_epsilon_budget",
            "secagg_clip",
        )
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction-train {self.fraction_train}: must be in (0, 1]")
        if not 0 < self.local_fraction <= 1:
            raise ValueError(f"local-fraction {self.local_fraction}: must be in (0, 1]")
        if self.dp and self.local_fraction < 1:
            raise ValueError(
                "dp with local-fraction < 1: the privacy accountant assumes each round samples "
                "from all local notes"
            )
        if not 0 < self.lr_min_fraction <= 1:
            raise ValueError(f"lr-min-fraction {self.lr_min_fraction}: must be in (0, 1]")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk-fraction {self.topk_fraction}: must be in (0, 1]")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp-delta {self.dp_delta}: must be in (0, 1)")
        if self.dp and self.strategy == "fedprox":
            raise ValueError(
                "dp with strategy fedprox: Opacus clips per-sample gradients of the "
                "data loss only, so the proximal term would be silently lost"
            )
        if self.secagg and self.compression != "none":
            raise ValueError(
                "secagg with compression: SecAgg+ quantizes and masks whole "
                "tensors itself; set compression = none"
            )
        if self.secagg and not 2 <= self.secagg_threshold <= self.secagg_shares:
            raise ValueError("secagg-threshold must be in 2..secagg-shares")
        if self.secagg and (self.secagg_shares < 3 or self.secagg_shares > self.min_nodes):
            raise ValueError(
                "secagg-shares must be >= 3 (Flower) and <= min-nodes, so every "
                "sampled node can hold a share"
            )

    def round_lr_factor(self, server_round: int) -> float:
        """The rates' multiplier in `server_round` (1-based): 1 throughout for `constant`; for
        `cosine`, half a cosine from 1 at the first round to `lr_min_fraction` at the last."""
        if self.lr_schedule == "constant" or self.rounds == 1:
            return 1.0
        progress = min(max(server_round - 1, 0) / (self.rounds - 1), 1.0)
        low = self.lr_min_fraction
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))

    @property
    def spec(self) -> str:
        """The layer selection that trains: `all` in full mode."""
        return "all" if self.mode == "full" else self.layers


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} {value!r}: choose one of {list(allowed)}")


def _positive(cfg: FederationConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")


def from_run_config(run_config: Mapping[str, Any]) -> FederationConfig:
    """Flower's run config (dotted kebab-case keys, e.g. `dp.noise-multiplier`) -> our config."""
    known = {f.name: f for f in fields(FederationConfig)}
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        name = key.replace(".", "_").replace("-", "_")
        if name not in known:
            raise ValueError(f"unknown run-config key {key!r}")
        values[name] = _coerce(key, value, known[name].type)
    return FederationConfig(**values)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = str(annotation)
    if kind == "tuple[str, ...]":
        return tuple(v.strip() for v in str(value).split(",") if v.strip())
    caster = {"int": int, "float": float, "str": str, "bool": bool}.get(kind)
    if caster is None:
        return value
    if caster is bool and not isinstance(value, bool):
        raise ValueError(f"run-config {key}: expected true or false, got {value!r}")
    try:
        return caster(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"run-config {key}: expected {kind}, got {value!r}") from err


def to_run_config(cfg: FederationConfig) -> dict[str, Any]:
    """Our config as Flower run-config values (kebab-case; labels comma-joined)."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name.replace("_", "-")] = ",".join(value) if isinstance(value, tuple) else value
    return out
