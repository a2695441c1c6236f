"""The consortium's round-0 model made from public notes: a warm start for private rounds.

Every node and the server otherwise start from the same seeded init. A warm start is that init
trained, without DP and outside any hospital, on notes the consortium may share (a public
corpus): DP-SGD's noisy rounds then refine a model that already tags entities instead of
learning from nothing (benchmarks/results/privacy.md measures what it buys). It is an .npz of
the travelling tensors with the settings it was made for; the ServerApp starts from it when the
run config names it (`warm-start`) and refuses one made for other settings.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from appliance.notes import Note
from federation.config import FederationConfig, without_dp

Arrays = dict[str, np.ndarray]
SETTINGS = "__settings__"
# What fixes the travelling tensors' names, shapes and meaning (the LoRA ones in mode lora): a
# warm start made for other values of these cannot start the run.
BINDING = ("base", "attention", "labels", "task", "mode", "layers", "lora_rank", "lora_alpha")


def _binding(cfg: FederationConfig) -> dict[str, Any]:
    values = asdict(cfg)
    keys = [k for k in BINDING if cfg.mode == "lora" or not k.startswith("lora_")]
    return {key: list(values[key]) if key == "labels" else values[key] for key in keys}


def make_warm_start(
    cfg: FederationConfig,
    notes: Sequence[Note],
    epochs: int,
    out: Path,
    state_dir: Path,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Train the seeded start of `cfg` on `notes` for `epochs` (no DP and no proximal pull back
    to the seeded start; `batch_size` windows a step) and write it to `out` (atomically).
    Returns what was made: tensors, notes, epochs."""
    from federation.task import HospitalNode

    if not notes:
        raise ValueError("warm start: no notes to train on")
    local = without_dp(cfg, local_epochs=epochs, batch_size=batch_size, rounds=1,
                       compression="none", local_fraction=1.0, strategy="fedavg")  # fmt: skip
    node = HospitalNode.load(local, list(notes), state_dir / "warm-start", "warm-start",
                             bases_dir=state_dir)  # fmt: skip
    arrays = node.train_round(node.initial_arrays(), 1).payload
    settings = {**_binding(node.cfg), "notes": len(notes), "epochs": epochs}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays, **{SETTINGS: np.array(json.dumps(settings))})  # type: ignore[arg-type]
    tmp.replace(out)
    return {"path": str(out), "tensors": len(arrays), **settings}


def load_warm_start(
    path: Path, cfg: FederationConfig, reference: Mapping[str, np.ndarray]
) -> Arrays:
    """The warm start at `path` for a run of `cfg` whose seeded start is `reference`: the same
    tensor names and shapes, finite values, made for the same binding settings."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        settings = json.loads(str(arrays.pop(SETTINGS)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"warm-start {path}: not a warm start ({err})") from err
    expected = _binding(cfg)
    for key, value in expected.items():
        if settings.get(key) != value:
            raise ValueError(
                f"warm-start {path}: made for {key} = {settings.get(key)!r}, the run has {value!r}"
            )
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        raise ValueError(
            f"warm-start {path}: tensors missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, tensor in arrays.items():
        if tensor.shape != reference[name].shape:
            raise ValueError(
                f"warm-start {path}: {name} has shape {tensor.shape}, "
                f"the run's is {reference[name].shape}"
            )
        if not np.isfinite(tensor).all():
            raise ValueError(f"warm-start {path}: {name} holds non-finite values")
    return {name: arrays[name].astype(reference[name].dtype) for name in reference}
