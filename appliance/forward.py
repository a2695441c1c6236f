"""The token classifier's forward pass, split at a layer so a frozen prefix can be cached.

Both the cached and the uncached training paths and prediction go through these functions, so
causal vs bidirectional attention is decided in one place (`attention_bias`).
"""

from __future__ import annotations

from typing import Any

import torch

# A LlamaForTokenClassification; its submodules are set dynamically, so typed loosely.
Model = Any


def attention_bias(attention_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (B, 1, T, T): 0 where a query may attend a key, dtype-min elsewhere.

    Padding keys are always hidden; `causal` also hides keys to the right of the query.
    """
    batch, length = attention_mask.shape
    allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
    if causal:
        lower = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
        allowed = allowed & lower  # (B, 1, T, T)
    allowed = allowed.expand(batch, 1, length, length)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def set_attention(model: Model, mode: str, first_trained: int) -> None:
    """Set the first unmasked layer for `mode` (`bidirectional-trained`: `first_trained`)."""
    model.config.appliance_unmask_from = {
        "causal": model.config.num_hidden_layers,
        "bidirectional": 0,
        "bidirectional-trained": first_trained,
    }[mode]


def unmask_from(model: Model) -> int:
    """Index of the first layer that attends both ways (num_layers: fully causal)."""
    return int(getattr(model.config, "appliance_unmask_from", model.config.num_hidden_layers))


def embed(model: Model, input_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, T, C)."""
    return model.model.embed_tokens(input_ids)


def run_layers(
    model: Model,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    stop: int | None = None,
) -> torch.Tensor:
    """Decoder layers `start:stop` on hidden states (B, T, C); right-padded batches."""
    batch, length, _ = hidden.shape
    positions = torch.arange(length, device=hidden.device).unsqueeze(0).expand(batch, length)
    rotary = model.model.rotary_emb(hidden, position_ids=positions)
    first_unmasked = unmask_from(model)
    biases: dict[bool, torch.Tensor] = {}
    stop = len(model.model.layers) if stop is None else stop
    for index in range(start, stop):
        causal = index < first_unmasked
        if causal not in biases:
            biases[causal] = attention_bias(attention_mask, causal, hidden.dtype)
        hidden = model.model.layers[index](
            hidden,
            attention_mask=biases[causal],
            position_embeddings=rotary,
            position_ids=positions,
        )
    return hidden


def head(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, dropout and classification head: (B, T, C) -> logits (B, T, num_labels)."""
    return model.score(model.dropout(model.model.norm(hidden)))


@torch.no_grad()
def prefix_states(
    model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor, first_trained: int
) -> torch.Tensor:
    """Hidden states entering layer `first_trained`: what the frozen prefix computes."""
    return run_layers(model, embed(model, input_ids), attention_mask, 0, first_trained)


def logits_from(
    model: Model, hidden: torch.Tensor, attention_mask: torch.Tensor, first_layer: int
) -> torch.Tensor:
    """Logits from hidden states entering layer `first_layer` (0: from the embeddings)."""
    return head(model, run_layers(model, hidden, attention_mask, first_layer))


def full_logits(
    model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The uncached path: embeddings, every layer, head."""
    return logits_from(model, embed(model, input_ids), attention_mask, 0)
