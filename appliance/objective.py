"""What a training step optimizes and how: the optimizer and its parameter groups (with
layer-wise learning-rate decay), the learning-rate schedule, and the token loss (label
smoothing, the weight of the `O` tag)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import get_scheduler

from appliance.collate import collate_ids, collate_states
from appliance.config import TrainConfig
from appliance.encoding import IGNORE, EncodedWindow
from appliance.forward import full_logits, logits_from
from appliance.layers import LayerSelection
from appliance.model import LoadedModel

# TrainConfig.schedule -> transformers' scheduler name (each warms up first)
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_rate(name: str, selection: LayerSelection, cfg: TrainConfig) -> float:
    """Learning rate of parameter `name`: the head's, or the layers' scaled by
    `cfg.layer_decay` once per trained layer between it and the top trained layer."""
    if name.startswith("score."):
        return cfg.head_learning_rate
    match = _LAYER.search(name)
    if match is None or not selection.indices or cfg.layer_decay == 1.0:
        return cfg.learning_rate
    below_top = sum(1 for i in selection.indices if i > int(match.group(1)))
    return cfg.learning_rate * cfg.layer_decay**below_top


def build_optimizer(
    model: torch.nn.Module, selection: LayerSelection, cfg: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW, Adafactor or SGD with momentum (`cfg.optimizer`); no weight decay on norms and
    biases; one parameter group per learning rate (the head's, and each trained layer's when
    `cfg.layer_decay` is below 1)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if name.startswith("score.") or param.ndim < 2 else cfg.weight_decay
        groups.setdefault((layer_rate(name, selection, cfg), decay), []).append(param)
    param_groups = [
        {"params": params, "lr": rate, "weight_decay": decay}
        for (rate, decay), params in groups.items()
    ]
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(param_groups)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.learning_rate, momentum=0.9)
    return torch.optim.AdamW(param_groups)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up over `cfg.warmup_ratio` of `steps`, then `cfg.schedule` (linear or cosine decay
    to zero at the last step, or constant)."""
    return get_scheduler(  # type: ignore[return-value]
        SCHEDULERS[cfg.schedule],
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * steps),
        num_training_steps=steps,
    )


def tag_weights(num_tags: int, cfg: TrainConfig) -> torch.Tensor | None:
    """Per-tag loss weights: `cfg.o_weight` for `O` (tag 0), 1 for the entity tags; None when
    all are 1 (the plain mean)."""
    if cfg.o_weight == 1.0:
        return None
    weights = torch.ones(num_tags)
    weights[0] = cfg.o_weight
    return weights


def batch_loss(
    loaded: LoadedModel,
    windows: Sequence[EncodedWindow],
    states: Sequence[torch.Tensor] | None,
    first_layer: int,
    cfg: TrainConfig | None = None,
    per_window: bool = False,
) -> torch.Tensor:
    """Token cross-entropy of one batch, from cached prefix states when given: the mean over
    labelled tokens, weighted by tag (`cfg.o_weight`) and label-smoothed
    (`cfg.label_smoothing`) when `cfg` asks for it. With `per_window` it is each window's own
    token mean instead (one loss per window), so a window's gradient depends on that window
    alone, whatever else shares its batch (what DP-SGD's per-sample clipping needs)."""
    ids, mask, labels = collate_ids(windows, int(loaded.tokenizer.pad_token_id))
    if states is not None:
        logits = logits_from(loaded.model, collate_states(states), mask, first_layer)
    else:
        logits = full_logits(loaded.model, ids, mask)
    flat = logits.flatten(0, 1).float()
    weight = tag_weights(flat.shape[-1], cfg) if cfg is not None else None
    tokens = torch.nn.functional.cross_entropy(
        flat,
        labels.flatten(),
        weight=weight,
        ignore_index=IGNORE,
        label_smoothing=cfg.label_smoothing if cfg is not None else 0.0,
        reduction="none",
    ).view(labels.shape)
    kept = (labels != IGNORE).float()
    if weight is not None:  # each labelled token counts by its tag's weight
        kept = kept * weight[labels.clamp(min=0)]
    if not per_window:
        return tokens.sum() / kept.sum()
    return tokens.sum(1) / kept.sum(1).clamp(min=1e-12)
