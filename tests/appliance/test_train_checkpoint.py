"""A training cut short resumes at its next epoch and ends as the uninterrupted one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.config import ModelConfig
from appliance.layers import LayerSelection
from appliance.model import load_model
from appliance.readers import read_jsonl
from appliance.training import Trainer
from tests.appliance.corpus import write_jsonl
from tests.conftest import tiny_train_config

LABELS = ("Chemical", "Disease")


class PowerCut(Exception):
    pass


def _trainer(tiny_llama: Path, tmp_path: Path, epochs: int = 3) -> Trainer:
    loaded = load_model(ModelConfig(base=str(tiny_llama)), LABELS, tmp_path, "top:2")
    cfg = tiny_train_config("top:2", epochs, tmp_path / "act")
    return Trainer(loaded, LayerSelection.parse("top:2", loaded.num_layers), cfg, progress=False)


def _cut_after(steps: int):
    """An extra loss of 0 that fails at the step after `steps` (a crash mid-epoch)."""
    count = {"n": 0}

    def term() -> torch.Tensor:
        count["n"] += 1
        if count["n"] > steps:
            raise PowerCut
        return torch.zeros(())

    return term


def test_a_cut_training_resumes_and_ends_as_the_whole_one(tiny_llama: Path, tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    train = read_jsonl(write_jsonl(root / "train.jsonl", 48, seed=1)).notes
    dev = read_jsonl(write_jsonl(root / "dev.jsonl", 16, seed=2)).notes
    whole = _trainer(tiny_llama, tmp_path)
    expected = whole.fit(train, dev)
    expected_state = whole.selection.trained_state(whole.loaded.model)

    checkpoint = tmp_path / "ckpt" / "train.pt"
    cut = _trainer(tiny_llama, tmp_path)
    cut.checkpoint = checkpoint
    cut.extra_loss = _cut_after(8)  # 6 steps an epoch: cut in the second epoch
    with pytest.raises(PowerCut):
        cut.fit(train, dev)
    assert checkpoint.exists()

    resumed = _trainer(tiny_llama, tmp_path)
    resumed.checkpoint = checkpoint
    result = resumed.fit(train, dev)
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert [h.dev_f1 for h in result.history] == [h.dev_f1 for h in expected.history]
    assert result.best_epoch == expected.best_epoch
    for name, tensor in expected_state.items():
        torch.testing.assert_close(
            resumed.selection.trained_state(resumed.loaded.model)[name], tensor
        )


def test_a_checkpoint_of_other_settings_or_a_damaged_one_is_refused(
    tiny_llama: Path, tmp_path: Path
):
    root = tmp_path / "data"
    root.mkdir()
    train = read_jsonl(write_jsonl(root / "train.jsonl", 24, seed=1)).notes
    checkpoint = tmp_path / "train.pt"
    first = _trainer(tiny_llama, tmp_path, epochs=1)
    first.checkpoint = checkpoint
    first.fit(train, [])
    other = _trainer(tiny_llama, tmp_path, epochs=2)
    other.cfg = replace(other.cfg, learning_rate=1e-3)
    other.checkpoint = checkpoint
    with pytest.raises(ValueError, match="made for other training settings or notes"):
        other.fit(train, [])
    more = _trainer(tiny_llama, tmp_path, epochs=2)  # more epochs of the same training: resumed
    more.checkpoint = checkpoint
    assert [h.epoch for h in more.fit(train, []).history] == [1, 2]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ValueError, match="train.pt: unreadable"):
        more.fit(train, [])
