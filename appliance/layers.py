"""Layer selection: which decoder layers train (and travel); everything else is frozen."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from appliance.config import LARGE_BASE_PARAMETERS

HEAD_PREFIX = "score."
_SPEC = re.compile(r"^(top|bottom):(\d+)$|^layers:([\d,\s]+)$|^(all|head)$")


@dataclass(frozen=True)
class LayerSelection:
    """The decoder layers that train, as sorted indices; the head always trains."""

    spec: str
    indices: tuple[int, ...]
    num_layers: int

    @classmethod
    def parse(cls, spec: str, num_layers: int) -> LayerSelection:
        """Parse `top:N`, `bottom:N`, `layers:i,j,...`, `all` or `head` for a model of `num_layers`.

        Raises ValueError naming the spec when it is malformed, empty or out of range.
        """
        text = spec.strip().lower()
        match = _SPEC.match(text)
        if match is None:
            raise ValueError(
                f"layer spec {spec!r} is malformed: "
                "use top:N, bottom:N, layers:i,j,..., all or head"
            )
        top, count, listed, word = match.groups()
        if word == "all":
            indices = list(range(num_layers))
        elif word == "head":
            indices = []
        elif listed is not None:
            indices = _parse_list(spec, listed, num_layers)
        else:
            n = int(count)
            if not 1 <= n <= num_layers:
                raise ValueError(f"layer spec {spec!r}: N must be in 1..{num_layers}, got {n}")
            indices = list(range(num_layers - n, num_layers)) if top == "top" else list(range(n))
        return cls(text, tuple(sorted(indices)), num_layers)

    @property
    def first(self) -> int:
        """Lowest trained layer; everything below is a frozen prefix (num_layers: head only)."""
        return self.indices[0] if self.indices else self.num_layers

    def module_names(self) -> list[str]:
        return [f"model.layers.{i}" for i in self.indices]

    def is_trained(self, parameter_name: str) -> bool:
        if parameter_name.startswith(HEAD_PREFIX):
            return True
        return any(parameter_name.startswith(f"{name}.") for name in self.module_names())

    def apply(self, model: nn.Module) -> None:
        """Freeze everything but the selected layers and the head."""
        for name, param in model.named_parameters():
            param.requires_grad_(self.is_trained(name))

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors that one exchange carries: selected layers + head."""
        return {k: v for k, v in model.state_dict().items() if self.is_trained(k)}

    def report(self, model: nn.Module) -> dict[str, Any]:
        """Trainable parameters and the bytes one exchange of them costs (at their dtype)."""
        state = self.trained_state(model)
        trainable = sum(t.numel() for t in state.values())
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        total = sum(p.numel() for p in model.parameters())
        return {
            "spec": self.spec,
            "layers": list(self.indices),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_share": trainable / total if total else 0.0,
            "exchange_bytes": nbytes,
        }


AUTO = "auto"


def auto_spec(num_layers: int, parameters: int) -> str:
    """The selection `auto` stands for on a base of `parameters` and `num_layers` decoder layers:
    the top 16 of a small base (the embedded model's 30: 0.859 strict F1 on BC5CDR against
    0.843 for the top 8, benchmarks/results/core_cli*.md), the top 8 of a large one (half of
    LLaMA 3.2-1B's 16: training them in fp32 with AdamW peaked at 11.3 GiB, scale.md; all 16
    would hold some 20 GB of weights, gradients and moments), every layer of a base that has
    no more."""
    count = 8 if parameters >= LARGE_BASE_PARAMETERS else 16
    return "all" if num_layers <= count else f"top:{count}"


def _parse_list(spec: str, listed: str, num_layers: int) -> list[int]:
    items = [item.strip() for item in listed.split(",")]
    if not items or any(not item for item in items):
        raise ValueError(f"layer spec {spec!r}: empty entry in the layer list")
    indices = [int(item) for item in items]
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layer spec {spec!r}: layer(s) {bad} out of range 0..{num_layers - 1}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"layer spec {spec!r}: a layer is listed twice")
    return indices
