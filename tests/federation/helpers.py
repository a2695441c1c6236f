"""Shared pieces of the federation tests: the synthetic corpus split over tiny hospitals."""

from __future__ import annotations

from pathlib import Path

from appliance.notes import Note
from appliance.readers import read_jsonl
from federation.config import FederationConfig
from federation.daemon_config import DaemonConfig
from tests.appliance.corpus import write_jsonl


def corpus(root: Path, count: int, seed: int) -> list[Note]:
    root.mkdir(parents=True, exist_ok=True)
    return read_jsonl(write_jsonl(root / f"notes-{seed}.jsonl", count, seed=seed)).notes


def tiny_config(base: Path, **overrides: object) -> FederationConfig:
    values: dict[str, object] = dict(
        base=str(base),
        mode="layers",
        dp=False,  # a test about DP turns it on
        layers="top:2",
        rounds=2,
        local_epochs=2,
        batch_size=8,
        learning_rate=3e-3,
        head_learning_rate=1e-2,
        min_nodes=2,
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.0,
    )
    values.update(overrides)
    return FederationConfig(**values)  # type: ignore[arg-type]


def daemon_config(tmp_path: Path, **overrides: object) -> DaemonConfig:
    """A plaintext daemon config for hospital-a with everything under `tmp_path`."""
    values: dict[str, object] = dict(
        hospital="hospital-a",
        superlink="127.0.0.1:9092",
        notes=tmp_path / "notes.jsonl",
        heldout=tmp_path / "heldout.jsonl",
        state_dir=tmp_path / "state",
        registry=tmp_path / "registry",
        insecure=True,
        restart_backoff_s=0.0,
    )
    values.update(overrides)
    return DaemonConfig(**values)  # type: ignore[arg-type]
