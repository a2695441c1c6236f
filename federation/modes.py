"""What trains and travels in each mode: selected layers, LoRA on them, or every layer.

- `layers`: the selected decoder layers + head (layer-skipping FL);
- `lora`:   PEFT LoRA adapters injected only into the selected layers (`layers_to_transform`),
            + head; a 4-bit (NF4) base makes it QLoRA, used where a GPU is present;
- `full`:   every decoder layer + head (the baseline; embeddings stay frozen).
The model keeps its module paths (`inject_adapter_in_model`, not a PeftModel wrapper), so the
core's forward, cache and trainer work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from appliance.layers import LayerSelection
from federation.config import FederationConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare(model: torch.nn.Module, cfg: FederationConfig, selection: LayerSelection) -> None:
    """Set which parameters train for `cfg.mode` (after `Trainer` applied the selection)."""
    selection.apply(model)
    if cfg.mode != "lora":
        return
    if not any(isinstance(m, LoraLayer) for m in model.modules()):
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=LORA_TARGETS,
            layers_to_transform=list(selection.indices),
            layers_pattern="layers",
        )
        inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or name.startswith("score."))


def travelling_names(model: torch.nn.Module) -> list[str]:
    """Names of the tensors one exchange carries (the trainable ones), in a fixed order."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def get_arrays(model: torch.nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """Copies of the tensors `names` of `model`, as float32 arrays."""
    return {name: np.array(value) for name, value in ModelArrays(model, names).items()}


class ModelArrays(Mapping[str, np.ndarray]):
    """The tensors `names` of a live model as float32 arrays, made one at a time when asked (a
    float32 CPU parameter is a view, not a copy): an update is encoded from the model without a
    second copy of the travelling part (1.95 GB at the 1B size for `top:8`). Read them before
    the model changes."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        self._params = {name: params[name] for name in names}  # in the order of `names`

    def __getitem__(self, name: str) -> np.ndarray:
        return self._params[name].detach().float().cpu().numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def set_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray], names: list[str]) -> None:
    """Load exchanged tensors; refuse missing, extra or misshaped ones."""
    if set(arrays) != set(names):
        missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
        raise ValueError(f"exchanged tensors differ: missing {missing[:3]}, unexpected {extra[:3]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            target = params[name]
            value = torch.from_numpy(np.asarray(arrays[name], np.float32))
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"tensor {name}: shape {tuple(value.shape)} != {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


def package_tensors(model: torch.nn.Module, selection: LayerSelection) -> dict[str, torch.Tensor]:
    """The selection's tensors under their base names, LoRA merged (W + scale * B @ A)."""
    merged: dict[str, torch.Tensor] = {}
    lora_modules = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or not selection.is_trained(name):
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner in lora_modules and leaf == "weight":
            module = lora_modules[owner]
            delta = module.get_delta_weight("default")  # type: ignore[attr-defined]
            merged[f"{owner}.weight"] = (tensor + delta).detach().clone()
        elif owner in lora_modules:
            merged[f"{owner}.{leaf}"] = tensor.detach().clone()
        else:
            merged[name] = tensor.detach().clone()
    return merged
