"""The federation's typed config, and the one place Flower's run config is converted into it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from appliance.config import LARGE_BASE_PARAMETERS, OPTIMIZERS, TrainConfig

MODES = ("layers", "lora", "full")
TASKS = ("ner", "sentence")
COMPRESSIONS = ("auto", "none", "fp16", "bf16", "int8", "topk")
STRATEGIES = ("fedavg", "fedprox")
LR_SCHEDULES = ("constant", "cosine")
CLIENT_DP = ("none", "client-fixed")
DP_CLIPPING = ("auto", "flat", "per-layer", "ghost")
FROZEN_QUANTIZATIONS = ("auto", "none", "nf4")
# The `auto`s: a base of at least LARGE_BASE_PARAMETERS trains on NF4, sends int8 and computes
# LARGE_BASE_MICRO_BATCH windows at a time (results/scale_default_1b*)
LARGE_BASE_MICRO_BATCH = 8


@dataclass(frozen=True)
class FederationConfig:
    """What a consortium run does. Defaults mirror `[tool.flwr.app.config]` in pyproject.toml:
    DP-SGD at every hospital on LoRA r16 adapters of the top 8 layers, Poisson batches of 256,
    the recipe benchmarks/results/privacy.md measured (with a public `warm-start`)."""

    base: str = field(
        default="embedded",
        metadata={
            "help": "the base every hospital has on disk: 'embedded' (SmolLM2-135M), a Hugging "
            "Face directory or a .gguf file"
        },
    )
    attention: str = field(
        default="bidirectional-trained",
        metadata={
            "help": "causal, bidirectional or bidirectional-trained, as in the core's [model] table"
        },
    )
    labels: tuple[str, ...] = field(
        default=("Chemical", "Disease"),
        metadata={"help": "entity types (comma-separated in the run config)"},
    )
    task: str = field(
        default="ner",
        metadata={
            "help": "ner, or sentence (appliance.sentence_task: trains and scores the same way, "
            "never served)"
        },
    )
    mode: str = field(
        default="lora",
        metadata={
            "help": "what travels: layers (selected layers + head), lora (LoRA adapters on the "
            "selected layers + head) or full (every layer + head)"
        },
    )
    layers: str = field(
        default="top:8", metadata={"help": "which layers train and travel (full mode: all)"}
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (mode lora)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (mode lora)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (mode lora)"})
    frozen_quantization: str = field(
        default="auto",
        metadata={
            "help": "the frozen layers while a hospital trains: none (fp32), nf4 (bitsandbytes "
            "4-bit; the trained layers and the head stay fp32) or auto: nf4 for a base of 500M "
            "parameters or more (LLaMA 3.2-1B: 1.2B), and for lora on a GPU"
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "adamw, adafactor (no first moment, a factored second: at the LLaMA "
            "3.2-1B size 3.9 GB less for top:8; it needs a larger learning-rate, e.g. 10x) or "
            "sgd (momentum 0.9, steps in proportion to the gradient; rates e.g. 10x adamw's)"
        },
    )
    rounds: int = field(default=3, metadata={"help": "federated rounds of a run"})
    local_epochs: int = field(default=1, metadata={"help": "epochs each hospital trains per round"})
    local_fraction: float = field(
        default=1.0,
        metadata={
            "help": "< 1: each round trains on a rotating share of the local notes (refused with "
            "dp)"
        },
    )
    batch_size: int = field(
        default=256,
        metadata={"help": "windows per optimizer step (with dp: the expected Poisson batch)"},
    )
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "windows per forward and backward pass: a batch is computed this many at a "
            "time and its gradients summed; under dp the per-sample gradients and the inputs "
            "Opacus keeps grow with it. 0: auto, 8 for a base of 500M parameters or more (a DP "
            "round of the defaults at the LLaMA 3.2-1B shape: 3.4 GiB at 8, 8.9 at 32), else 32"
        },
    )
    learning_rate: float = field(
        default=3e-3, metadata={"help": "peak learning rate of the trained layers or adapters"}
    )
    head_learning_rate: float = field(
        default=3e-3, metadata={"help": "learning rate of the classification head"}
    )
    lr_schedule: str = field(
        default="constant",
        metadata={
            "help": "constant, or cosine: both rates follow half a cosine over the run's rounds"
        },
    )
    lr_min_fraction: float = field(
        default=0.1,
        metadata={"help": "cosine: the last round's rates, as a fraction of the first's"},
    )
    max_tokens: int = field(default=256, metadata={"help": "model tokens per window"})
    context_tokens: int = field(
        default=32, metadata={"help": "context tokens on each side of a window's core"}
    )
    seed: int = field(
        default=13,
        metadata={
            "help": "seed of the head init, LoRA init and shuffling (each round adds its number)"
        },
    )
    warm_start: str = field(
        default="",
        metadata={
            "help": "the round-0 model: an .npz made by `appliance federate warm-start` from "
            "public notes, on the ServerApp's host; empty: the seeded start"
        },
    )
    strategy: str = field(
        default="fedavg", metadata={"help": "fedavg (weighted by examples) or fedprox"}
    )
    proximal_mu: float = field(
        default=0.01, metadata={"help": "FedProx proximal term weight (strategy fedprox)"}
    )
    fraction_train: float = field(
        default=1.0, metadata={"help": "share of the connected nodes sampled per round, in (0, 1]"}
    )
    min_nodes: int = field(default=2, metadata={"help": "nodes a round needs before it starts"})
    round_timeout_s: float = field(
        default=3600.0, metadata={"help": "seconds the server waits for a round's replies"}
    )
    compression: str = field(
        default="auto",
        metadata={
            "help": "update compression: none, fp16, bf16, int8 (block-quantized deltas), topk "
            "(with error feedback) or auto: int8 for layers or full mode on a base of 500M "
            "parameters or more, else none (always none under secagg or client-dp)"
        },
    )
    int8_block: int = field(
        default=64, metadata={"help": "values per int8 quantization block (compression int8)"}
    )
    topk_fraction: float = field(
        default=0.01, metadata={"help": "share of the deltas sent (compression topk), in (0, 1]"}
    )
    update_norm_bound: float = field(
        default=1e4, metadata={"help": "the server drops an update whose L2 delta norm is larger"}
    )
    dp: bool = field(
        default=True, metadata={"help": "sample-level DP-SGD (Opacus) at each hospital"}
    )
    dp_noise_multiplier: float = field(
        default=0.0,
        metadata={
            "help": "DP-SGD noise multiplier; 0: calibrated by each hospital before each round, "
            "the smallest at which dp-rounds rounds of its size spend at most dp-epsilon-budget "
            "(its ledger's spend so far included; Opacus' RDP accountant)"
        },
    )
    dp_rounds: int = field(
        default=10,
        metadata={
            "help": "dp-noise-multiplier 0: the rounds a hospital's budget is to last; after "
            "them its budget is spent and it declines further rounds of the model lineage"
        },
    )
    dp_max_grad_norm: float = field(
        default=1.0, metadata={"help": "DP-SGD per-sample clipping norm"}
    )
    dp_clipping: str = field(
        default="auto",
        metadata={
            "help": "flat (one norm over every trained tensor), per-layer (each tensor "
            "clipped to dp-max-grad-norm / sqrt(tensors): the same total norm, and noise), "
            "ghost (flat, by Opacus' ghost clipping: no per-sample gradient is stored, for a "
            "second backward pass) or auto: flat with mode lora, ghost otherwise"
        },
    )
    dp_subspace: int = field(
        default=0,
        metadata={
            "help": "DP-SGD: project each noisy gradient onto the top N directions of the "
            "gradients of dp-public-notes at the round's model (no extra epsilon: the noise "
            "outside them is dropped); 0: off"
        },
    )
    dp_subspace_adaptive: bool = field(
        default=False,
        metadata={
            "help": "dp-subspace: scale each step's coordinates in the subspace by their running "
            "RMS, so that with optimizer sgd (its momentum) the step is Adam's in the subspace"
        },
    )
    dp_public_notes: str = field(
        default="",
        metadata={
            "help": "dp-subspace: a public annotated notes file (conll, jsonl, ...) on every "
            "hospital's box, e.g. the warm start's notes"
        },
    )
    dp_epsilon_budget: float = field(
        default=8.0,
        metadata={
            "help": "epsilon a hospital may spend in all; a round that would exceed it is declined"
        },
    )
    dp_delta: float = field(
        default=1e-5,
        metadata={
            "help": "delta at which epsilon is accounted, in (0, 1); fixed once a ledger has spent"
        },
    )
    client_dp: str = field(
        default="none",
        metadata={
            "help": "none, or client-fixed (Flower's client-side fixed clipping, server-side noise)"
        },
    )
    client_dp_noise: float = field(
        default=0.1, metadata={"help": "client-fixed: noise multiplier added by the server"}
    )
    client_dp_clip: float = field(
        default=10.0, metadata={"help": "client-fixed: clipping norm of each update"}
    )
    secagg: bool = field(
        default=False,
        metadata={
            "help": "SecAgg+: the server only sees the sum of the updates (needs compression none)"
        },
    )
    secagg_shares: int = field(
        default=3, metadata={"help": "SecAgg+ shares per node: at least 3 and at most min-nodes"}
    )
    secagg_threshold: int = field(
        default=2, metadata={"help": "SecAgg+ shares needed to reconstruct, in 2..secagg-shares"}
    )
    secagg_clip: float = field(
        default=8.0, metadata={"help": "SecAgg+ clipping range of each (weighted) parameter"}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        _one_of("mode", self.mode, MODES)
        _one_of("task", self.task, TASKS)
        _one_of("compression", self.compression, COMPRESSIONS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("client-dp", self.client_dp, CLIENT_DP)
        _one_of("dp-clipping", self.dp_clipping, DP_CLIPPING)
        _one_of("frozen-quantization", self.frozen_quantization, FROZEN_QUANTIZATIONS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
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
            "dp_rounds",
            "dp_max_grad_norm",
            "dp_epsilon_budget",
            "secagg_clip",
        )
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction-train {self.fraction_train}: must be in (0, 1]")
        if not 0 < self.local_fraction <= 1:
            raise ValueError(f"local-fraction {self.local_fraction}: must be in (0, 1]")
        if not 0 < self.lr_min_fraction <= 1:
            raise ValueError(f"lr-min-fraction {self.lr_min_fraction}: must be in (0, 1]")
        if self.micro_batch_size < 0:
            raise ValueError(f"micro-batch-size {self.micro_batch_size}: must be >= 0 (0: auto)")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk-fraction {self.topk_fraction}: must be in (0, 1]")
        _check_dp(self)
        if self.secagg and self.compression not in ("none", "auto"):
            raise ValueError(
                "secagg with compression: SecAgg+ quantizes and masks whole "
                "tensors itself; set compression = none"
            )
        if self.client_dp != "none" and self.compression not in ("none", "auto"):
            raise ValueError(
                "client-dp with compression: Flower's client-side clipping takes the weights "
                "received from the weights sent, tensor by tensor; set compression = none"
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
    def clipping(self) -> str:
        """`dp_clipping` with auto resolved by mode. Whole weights clip by ghost clipping: no
        window's gradient of every weight is stored (a DP round of `top:8` at the LLaMA 3.2-1B
        shape peaked at 8.0 GiB, where per-sample gradients of 8 windows alone are 15.6 GB) and
        it is faster; LoRA's memory is the layers' stored inputs either way, and flat is faster
        there (benchmarks/results/dp_clipping*.md)."""
        if self.dp_clipping != "auto":
            return self.dp_clipping
        return "flat" if self.mode == "lora" else "ghost"

    def base_quantization(self, parameters: int, gpu: bool) -> str:
        """How a hospital loads a base of `parameters` to train on: "nf4" or "none"
        (`frozen_quantization` resolved). At the LLaMA 3.2-1B size NF4 halves the training's
        memory (benchmarks/results/scale.md); the embedded model trains in fp32."""
        if self.frozen_quantization != "auto":
            return self.frozen_quantization
        large = parameters >= LARGE_BASE_PARAMETERS
        return "nf4" if large or (self.mode == "lora" and gpu) else "none"

    def for_base(self, parameters: int) -> FederationConfig:
        """This configuration with `compression` and `micro_batch_size` resolved for a base of
        `parameters`: at the LLaMA 3.2-1B size an fp32 exchange of `top:8` is 1.95 GB each way,
        int8 deltas 0.52 GB (benchmarks/results/scale.md), and a DP round of micro-batches of 32
        windows peaks at 8.9 GiB, of 8 at 3.4 GiB. Server and nodes resolve it alike, from the
        base's config."""
        large = parameters >= LARGE_BASE_PARAMETERS
        cfg = self
        if cfg.micro_batch_size == 0:  # auto: 8 on a large base, else training's default
            micro = LARGE_BASE_MICRO_BATCH if large else TrainConfig.micro_batch_size
            cfg = replace(cfg, micro_batch_size=micro)
        if cfg.compression != "auto":
            return cfg
        whole_layers = large and cfg.mode in ("layers", "full")
        plain = cfg.secagg or cfg.client_dp != "none"
        return replace(cfg, compression="int8" if whole_layers and not plain else "none")

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


def _check_dp(cfg: FederationConfig) -> None:
    if cfg.dp and cfg.local_fraction < 1:
        raise ValueError(
            "dp with local-fraction < 1: the privacy accountant assumes each round samples "
            "from all local notes"
        )
    if cfg.dp_noise_multiplier < 0:
        raise ValueError(
            f"dp-noise-multiplier {cfg.dp_noise_multiplier}: must be >= 0 (0: calibrated)"
        )
    if not 0 < cfg.dp_delta < 1:
        raise ValueError(f"dp-delta {cfg.dp_delta}: must be in (0, 1)")
    if cfg.dp and cfg.strategy == "fedprox":
        raise ValueError(
            "dp with strategy fedprox: Opacus clips per-sample gradients of the "
            "data loss only, so the proximal term would be silently lost"
        )
    _check_subspace(cfg)


def _check_subspace(cfg: FederationConfig) -> None:
    if cfg.dp_subspace < 0:
        raise ValueError(f"dp-subspace {cfg.dp_subspace}: must be >= 0 (0: off)")
    if cfg.dp_subspace and not cfg.dp:
        raise ValueError("dp-subspace without dp: the projection is a step of DP-SGD")
    if cfg.dp_subspace and not cfg.dp_public_notes:
        raise ValueError("dp-subspace needs dp-public-notes, the notes its directions come from")
    if cfg.dp_subspace_adaptive and not cfg.dp_subspace:
        raise ValueError("dp-subspace-adaptive without dp-subspace: it scales subspace coordinates")
    if cfg.dp_subspace_adaptive and cfg.optimizer != "sgd":
        raise ValueError(
            f"dp-subspace-adaptive with optimizer {cfg.optimizer}: it needs sgd, whose step stays "
            "in the subspace (adamw's per-weight scaling would spread it out again)"
        )


def without_dp(cfg: FederationConfig, **changes: Any) -> FederationConfig:
    """`cfg` with DP off (`dp` false, each `dp_*` field at its default) and `changes` applied:
    training that must not be private, such as a public warm start."""
    defaults: dict[str, Any] = {
        f.name: f.default for f in fields(FederationConfig) if f.name.startswith("dp_")
    }
    return replace(cfg, **{"dp": False, **defaults, **changes})


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
