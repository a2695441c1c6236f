"""Model packages: only the trained layers + head, label map, base fingerprint and provenance.

A package directory holds `weights.safetensors` and `package.json` (which records the weights'
size and sha256). It loads back onto the exact base it was trained from; any other base is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from appliance.config import ModelConfig
from appliance.errors import PackageError
from appliance.forward import set_attention
from appliance.layers import LayerSelection
from appliance.model import LoadedModel, load_model
from appliance.package_meta import (
    FORMAT,
    META,
    WEIGHTS,
    missing,
    read_package_meta,
    verified_weights_sha256,
    weights_record,
)


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def selection_spec(self) -> str:
        return str(self.meta["layers"]["spec"])


def save_package(
    path: str | Path,
    loaded: LoadedModel,
    selection: LayerSelection,
    windowing: dict[str, int],
    training: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the package atomically (a temp dir renamed into place).

    `tensors` replaces the selection's state when the weights live elsewhere (e.g. LoRA merged
    into the selected layers by federation); every name must belong to the selection.
    """
    target = Path(path)
    if target.exists():
        raise PackageError(f"{target}: already exists; choose a new package path")
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        tensors = selection.trained_state(loaded.model)
    elif not all(selection.is_trained(name) for name in tensors):
        raise PackageError(f"{target}: tensors outside the selection {selection.spec}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp / WEIGHTS))
    meta = {
        "format": FORMAT,
        "weights": weights_record(tmp),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base": {
            "spec": loaded.config.base,
            "path": loaded.source.display,
            "fingerprint": loaded.fingerprint,
            "num_layers": loaded.num_layers,
            "hidden_size": loaded.model.config.hidden_size,
        },
        "attention": loaded.config.attention,
        "labels": list(loaded.labels),
        "layers": {"spec": selection.spec, "indices": list(selection.indices)},
        "windowing": windowing,
        "exchange": selection.report(loaded.model),
        "training": training,
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.rename(target)
    return target


def read_package(path: str | Path) -> ModelPackage:
    """Read a package, refusing a weights file that differs from package.json's record."""
    root = Path(path)
    meta = read_package_meta(root)
    if meta.get("format") != FORMAT:
        raise PackageError(f"{root}: unknown package format {meta.get('format')!r}")
    verified_weights_sha256(root, meta)
    try:
        tensors = load_file(str(root / WEIGHTS))
    except FileNotFoundError as err:
        raise missing(root, WEIGHTS) from err
    except (OSError, ValueError, SafetensorError) as err:
        raise PackageError(f"{root / WEIGHTS}: unreadable: {err}") from err
    return ModelPackage(root, meta, tensors)


def apply_package(loaded: LoadedModel, package: ModelPackage) -> None:
    """Load the package's tensors into `loaded`; refuse a different base or label set."""
    expected = package.meta["base"]["fingerprint"]
    if loaded.fingerprint != expected:
        raise PackageError(
            f"{package.path}: trained on base {expected[:19]}..., but the loaded base "
            f"{loaded.source.display} is {loaded.fingerprint[:19]}...; load it onto its own base"
        )
    if list(loaded.labels) != package.meta["labels"]:
        raise PackageError(f"{package.path}: label set {package.meta['labels']} != model's")
    state = loaded.model.state_dict()
    for name, tensor in package.tensors.items():
        if name not in state or state[name].shape != tensor.shape:
            raise PackageError(f"{package.path}: tensor {name} does not fit the base model")
    loaded.model.load_state_dict(package.tensors, strict=False)
    selection = LayerSelection.parse(package.selection_spec, loaded.num_layers)
    set_attention(loaded.model, package.meta["attention"], selection.first)
    loaded.model.eval()


def entity_types(package: ModelPackage) -> list[str]:
    return [tag[2:] for tag in package.meta["labels"] if tag.startswith("B-")]


def load_packaged_model(
    path: str | Path,
    state_dir: str | Path,
    base: str | None = None,
    quantization: str = "none",
    device: str = "cpu",
) -> tuple[LoadedModel, ModelPackage]:
    """Load a package's base (or `base`, e.g. where IT placed the weights on this box) + package.

    The package comes back without its tensors: they were copied into the model, and holding
    them would keep the memory-mapped weights file resident beside the model (1.8 GiB at the 1B
    size for `top:8`)."""
    package = read_package(path)
    config = ModelConfig(
        base=base or package.meta["base"]["spec"],
        attention=package.meta["attention"],
        quantization=quantization,
        device=device,
    )
    loaded = load_model(config, entity_types(package), state_dir, package.selection_spec)
    apply_package(loaded, package)
    return loaded, replace(package, tensors={})
