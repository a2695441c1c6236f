"""The plain layer-skipping recipe most federation benchmarks measure: whole layers travel, no
DP, batches of 16, AdamW at 3e-4 (the head at 1e-3). The federation's own defaults are the DP
recipe instead (LoRA r16 on top:8, Poisson batches of 256, DP-SGD); a benchmark builds its
configs from here, so its rows keep their meaning whatever those defaults are."""

from __future__ import annotations

from typing import Any

from federation.config import FederationConfig

PLAIN_LAYERS: dict[str, Any] = {
    "mode": "layers",
    "lora_rank": 8,
    "lora_alpha": 16,
    "batch_size": 16,
    "learning_rate": 3e-4,
    "head_learning_rate": 1e-3,
    "dp": False,
}


def plain_config(**changes: Any) -> FederationConfig:
    """A FederationConfig of the plain recipe with `changes` on top."""
    return FederationConfig(**{**PLAIN_LAYERS, **changes})


def plain_changes(cfg: FederationConfig) -> list[tuple[str, Any]]:
    """(field, value) of each setting of `cfg` that differs from the plain recipe: a cache key
    that survives new config fields and changed defaults."""
    plain = plain_config()
    return [(k, v) for k, v in vars(cfg).items() if getattr(plain, k) != v]
