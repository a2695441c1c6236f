"""Encoded windows -> padded torch tensors for the model (the torch side of `encoding`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from appliance.encoding import EncodedWindow, pad_windows


def collate_ids(
    windows: Sequence[EncodedWindow], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (B, T) int64."""
    ids, mask, labels = pad_windows(windows, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)


def collate_states(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad cached hidden states (T_i, C) into (B, T, C) with zeros (masked anyway)."""
    length = max(s.shape[0] for s in states)
    out = torch.zeros((len(states), length, states[0].shape[1]), dtype=states[0].dtype)
    for row, s in enumerate(states):
        out[row, : s.shape[0]] = s
    return out
