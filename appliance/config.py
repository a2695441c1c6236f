"""Typed configuration of the appliance core, validated once at the boundary."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.tomlconfig import check_keys, read_toml

ATTENTION_MODES = ("bidirectional", "causal", "bidirectional-trained")
QUANTIZATIONS = ("none", "nf4")
DEVICES = ("cpu", "cuda")
OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("linear", "cosine", "constant")
DEFAULT_LABELS = ("Chemical", "Disease")
# A base this large (LLaMA 3.2-1B: 1.24 B) is "large" wherever a default depends on the base's
# size: the layers `appliance train` selects, the federation's frozen quantization, compression
# and micro-batch. The embedded SmolLM2-135M is small.
LARGE_BASE_PARAMETERS = 500_000_000


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    base: str = field(
        default="embedded",
        metadata={"help": "'embedded' (SmolLM2-135M GGUF), a Hugging Face dir, or a .gguf file"},
    )
    attention: str = field(
        default="bidirectional-trained",
        metadata={
            "help": "'causal' (pre-training mask), 'bidirectional' (every layer unmasked) or "
            "'bidirectional-trained' (only the trained layers unmasked)"
        },
    )
    quantization: str = field(
        default="none", metadata={"help": "'none' (fp32) or 'nf4' (bitsandbytes 4-bit)"}
    )
    device: str = field(
        default="cpu", metadata={"help": "'cpu' or 'cuda' (where the weights are placed)"}
    )

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        if not self.base:
            raise ValueError("base must be 'embedded' or a path to a model")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")


@dataclass
class TrainConfig:
    """How the selected layers are trained."""

    layers: str = field(
        default="auto",
        metadata={
            "help": "layer selection spec (top:N, bottom:N, layers:i,j,..., all, head) or auto: "
            "top:16 on a base under 500 M parameters (the embedded model), top:8 on a larger one "
            "(LLaMA 3.2-1B), all on a base with no more layers than that"
        },
    )
    labels: tuple[str, ...] = field(default=DEFAULT_LABELS, metadata={"help": "entity types"})
    epochs: int = field(default=3, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=16, metadata={"help": "windows per optimizer step"})
    micro_batch_size: int = field(
        default=32,
        metadata={
            "help": "windows per forward and backward pass: a larger batch is computed this many "
            "at a time, shortest first, and its gradients summed (memory of this many)"
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "adamw, adafactor (factored second moments, no first moment: a trained "
            "weight costs its gradient and little more, against two fp32 moments for adamw) or "
            "sgd (momentum 0.9: a step in proportion to the gradient, where AdamW's moves every "
            "weight by about the learning rate even when DP-SGD's noise is all it sees; it needs "
            "its own rates, e.g. 10x AdamW's)"
        },
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the head"})
    weight_decay: float = field(default=0.01, metadata={"help": "weight decay of the weights"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "share of steps warming up"})
    schedule: str = field(
        default="linear",
        metadata={
            "help": "learning rate after the warm-up: linear or cosine decay to zero at the "
            "last step of `epochs`, or constant"
        },
    )
    layer_decay: float = field(
        default=1.0,
        metadata={
            "help": "layer-wise learning-rate decay: each trained layer's rate is this factor "
            "times the rate of the trained layer above it (1: one rate for all)"
        },
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the token loss, in [0, 1)"}
    )
    o_weight: float = field(
        default=1.0,
        metadata={"help": "loss weight of the O tag against 1 for the entity tags (1: plain mean)"},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    patience: int = field(default=2, metadata={"help": "epochs without dev F1 gain before stop"})
    seed: int = field(default=13, metadata={"help": "seed for shuffling and the head init"})
    max_tokens: int = field(default=256, metadata={"help": "model tokens per window"})
    context_tokens: int = field(default=32, metadata={"help": "context tokens on each side"})
    max_train_notes: int = field(default=0, metadata={"help": "use only the first N (0: all)"})
    max_dev_notes: int = field(default=0, metadata={"help": "use only the first N (0: all)"})
    use_cache: bool = field(default=True, metadata={"help": "frozen-prefix activation cache"})
    cache_dir: str = field(default="", metadata={"help": "activation cache dir (default: state)"})

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        positive = ("epochs", "batch_size", "micro_batch_size", "max_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "head_learning_rate", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.context_tokens < 0 or self.max_tokens - 2 * self.context_tokens < 8:
            raise ValueError(
                f"max_tokens={self.max_tokens} leaves no room for context_tokens="
                f"{self.context_tokens} on both sides (need max_tokens - 2*context >= 8)"
            )
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct and non-empty, got {self.labels}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.o_weight > 0:
            raise ValueError(f"o_weight must be > 0, got {self.o_weight}")


@dataclass
class ApplianceConfig:
    """Everything the core needs; read from TOML (`[model]`, `[train]`) and CLI flags."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the [model] table"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the [train] table"})
    state_dir: str = field(
        default="",
        metadata={
            "help": "caches and bases (default: $APPLIANCE_STATE_DIR, else ~/.cache/appliance)"
        },
    )

    def __post_init__(self) -> None:
        if not self.state_dir:
            self.state_dir = os.environ.get(
                "APPLIANCE_STATE_DIR", str(Path.home() / ".cache" / "appliance")
            )
        if not self.train.cache_dir:
            self.train.cache_dir = str(Path(self.state_dir) / "activations")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls: type, raw: dict[str, Any], where: str) -> Any:
    check_keys(raw, cls, where)
    return cls(**raw)


def load_config(path: str | Path | None = None, **overrides: Any) -> ApplianceConfig:
    """Read a TOML config (optional) and apply `section.key` overrides (None values ignored)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, "config")
    model_raw = dict(raw.pop("model", {}))
    train_raw = dict(raw.pop("train", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        {"model": model_raw, "train": train_raw}.get(section, raw)[name or section] = value
    where = str(path) if path else "config"
    top = _section(ApplianceConfig, {k: v for k, v in raw.items()}, where) if raw else None
    return ApplianceConfig(
        model=_section(ModelConfig, model_raw, f"{where} [model]"),
        train=_section(TrainConfig, train_raw, f"{where} [train]"),
        state_dir=top.state_dir if top else "",
    )
