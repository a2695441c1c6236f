"""A training that resumes where it stopped: the trainer's state after every epoch, in one file.

Full-corpus training of many layers takes hours on a 2-core box; a power cut or a restart must
not cost them. After each epoch `Trainer.fit` (with its `checkpoint` set) writes the trained
tensors, the optimizer's and the schedule's state, the random generators, the best epoch's
tensors and the history so far, atomically; a later `fit` with the same settings and notes
continues at the next epoch and ends as the uninterrupted run would. A checkpoint made for other
settings or notes is refused by name rather than resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from appliance.config import TrainConfig

IGNORED = ("epochs", "patience", "cache_dir", "use_cache")  # may change between invocations


def fingerprint(cfg: TrainConfig, windows: int) -> str:
    """What must not change for a checkpoint to be resumed: the settings and the data size."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in IGNORED}
    text = json.dumps([settings, windows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, numbers, lists, dicts) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def load(path: Path, expected: str) -> dict[str, Any] | None:
    """The state at `path` (None when there is none), refused when made for other settings."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: unreadable ({err}); remove it to start over") from err
    if state.get("fingerprint") != expected:
        raise ValueError(
            f"checkpoint {path}: made for other training settings or notes; remove it to start "
            "over, or resume with the settings it was made for"
        )
    return state


def state_of(
    mark: str,
    epoch: int,
    stale: int,
    trained: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resumed `fit` needs after `epoch`; `result`: the TrainResult as a dict."""
    return {
        "fingerprint": mark,
        "epoch": epoch,
        "stale": stale,
        "trained": trained,
        "best": best,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "result": result,
    }


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
) -> None:
    """Put the trained tensors, the optimizer, the schedule and the generators back."""
    model.load_state_dict(state["trained"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
