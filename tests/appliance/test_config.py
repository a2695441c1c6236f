"""Config: TOML + overrides, validated at the boundary with messages naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ModelConfig, TrainConfig, load_config


def test_toml_and_overrides(tmp_path: Path):
    path = tmp_path / "a.toml"
    path.write_text(
        'state_dir = "/srv/state"\n[model]\nattention = "causal"\n'
        '[train]\nlayers = "top:4"\nlabels = ["Drug"]\n'
    )
    cfg = load_config(path, **{"train.epochs": 7, "train.layers": None})
    assert cfg.model.attention == "causal" and cfg.train.layers == "top:4"
    assert cfg.train.epochs == 7 and cfg.train.labels == ("Drug",)
    assert cfg.state_dir == "/srv/state"
    assert cfg.train.cache_dir == "/srv/state/activations"


def test_unknown_key_names_file_and_key(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ValueError, match=r"bad.toml \[train\]: unknown key\(s\) \['epochz'\]"):
        load_config(path)


def test_unreadable_toml_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\n")
    with pytest.raises(ValueError, match="broken.toml: cannot read config"):
        load_config(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "sideways"}, "attention must be one of"),
        ({"quantization": "int3"}, "quantization must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"base": ""}, "base must be"),
    ],
)
def test_model_config_rejects_impossible_values(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"max_tokens": 40, "context_tokens": 20}, "leaves no room"),
        ({"labels": ("A", "A")}, "labels must be distinct"),
        ({"patience": 0}, "patience"),
    ],
)
def test_train_config_rejects_impossible_values(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
