"""Layer selection specs, freezing, and exchange accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ModelConfig
from appliance.layers import LayerSelection, auto_spec
from appliance.model import load_model


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("top:2", (2, 3)),
        ("bottom:1", (0,)),
        ("layers:3,0", (0, 3)),
        ("all", (0, 1, 2, 3)),
        ("head", ()),
        ("  TOP:4 ", (0, 1, 2, 3)),
    ],
)
def test_specs_select_layers(spec: str, expected: tuple[int, ...]):
    assert LayerSelection.parse(spec, 4).indices == expected


@pytest.mark.parametrize(
    ("num_layers", "parameters", "expected"),
    [
        (30, 134_515_008, "top:16"),  # the embedded SmolLM2-135M
        (16, 1_235_814_400, "top:8"),  # LLaMA 3.2-1B
        (16, 400_000_000, "all"),  # small, with no more than 16 layers
        (8, 600_000_000, "all"),
        (9, 500_000_000, "top:8"),
        (4, 1_000_000, "all"),  # the tests' tiny model
    ],
)
def test_auto_takes_16_layers_of_a_small_base_and_8_of_a_large_one(
    num_layers: int, parameters: int, expected: str
):
    assert auto_spec(num_layers, parameters) == expected
    assert LayerSelection.parse(expected, num_layers).indices


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("top:5", "'top:5': N must be in 1..4"),
        ("top:0", "N must be in 1..4"),
        ("layers:1,9", r"layer\(s\) \[9\] out of range 0..3"),
        ("layers:", "malformed"),
        ("layers:1,,2", "empty entry"),
        ("layers:2,2", "listed twice"),
        ("middle:3", "malformed"),
        ("", "malformed"),
        ("top:x", "malformed"),
    ],
)
def test_impossible_specs_raise_naming_the_spec(spec: str, message: str):
    with pytest.raises(ValueError, match=message):
        LayerSelection.parse(spec, 4)


def test_apply_freezes_all_but_selected_layers_and_head(tiny_llama: Path, tmp_path: Path):
    loaded = load_model(ModelConfig(base=str(tiny_llama)), ("Chemical",), tmp_path)
    selection = LayerSelection.parse("layers:1,3", loaded.num_layers)
    selection.apply(loaded.model)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert {"score.weight", "score.bias"} <= trainable
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert any(n.startswith("model.layers.3.") for n in trainable)
    assert not any(
        n.startswith(("model.layers.0.", "model.layers.2.", "model.embed", "model.norm"))
        for n in trainable
    )
    assert selection.first == 1


def test_report_counts_parameters_and_exchange_bytes(tiny_llama: Path, tmp_path: Path):
    loaded = load_model(ModelConfig(base=str(tiny_llama)), ("Chemical",), tmp_path)
    model = loaded.model
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    head = sum(p.numel() for p in model.score.parameters())
    report = LayerSelection.parse("top:2", loaded.num_layers).report(model)
    assert report["trainable_parameters"] == 2 * per_layer + head
    assert report["exchange_bytes"] == 4 * (2 * per_layer + head)  # fp32
    head_only = LayerSelection.parse("head", loaded.num_layers).report(model)
    assert head_only["trainable_parameters"] == head
    assert LayerSelection.parse("head", loaded.num_layers).first == loaded.num_layers
