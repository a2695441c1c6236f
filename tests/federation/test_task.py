"""A hospital node: what travels, packages of the federated model, resume after a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.inference import Annotator
from appliance.package import load_packaged_model
from federation.task import HospitalNode
from tests.federation.helpers import corpus, tiny_config


@pytest.mark.parametrize("mode", ["layers", "lora"])
def test_package_of_the_federated_model_predicts_the_same(
    tiny_llama: Path, tmp_path: Path, mode: str
):
    notes = corpus(tmp_path / "c", 80, seed=1)
    node = HospitalNode.load(tiny_config(tiny_llama, mode=mode), notes, tmp_path / "n", "h")
    if mode == "lora":
        assert all("lora_" in n or n.startswith("score.") for n in node.names)
    else:
        assert all(
            n.startswith(("model.layers.2.", "model.layers.3.", "score.")) for n in node.names
        )
    update = node.train_round(node.initial_arrays(), 1)
    arrays = {k: v for k, v in update.payload.items()}
    path = node.write_package(arrays, tmp_path / "pkg")
    texts = [n.text for n in notes[:12]]
    expected = Annotator(node.loaded, 256, 32).annotate(texts)
    restored, package = load_packaged_model(path, tmp_path / "n")
    assert not any("lora" in k for k in package.tensors)
    got = Annotator(restored, 256, 32).annotate(texts)
    # LoRA merged into W differs from W + B @ A only by float rounding
    assert [[(e.start, e.end, e.label) for e in n] for n in got] == [
        [(e.start, e.end, e.label) for e in n] for n in expected
    ]
    assert [e.score for n in got for e in n] == pytest.approx(
        [e.score for n in expected for e in n], abs=1e-4
    )
    assert any(expected)


def test_topk_residual_survives_a_restart(tiny_llama: Path, tmp_path: Path):
    notes = corpus(tmp_path / "c", 40, seed=1)
    cfg = tiny_config(tiny_llama, compression="topk", topk_fraction=0.1, local_epochs=1)
    node = HospitalNode.load(cfg, notes, tmp_path / "n", "h")
    node.train_round(node.initial_arrays(), 1)
    restarted = HospitalNode.load(cfg, notes, tmp_path / "n", "h")
    assert set(restarted.residual) == set(node.residual)
    for name, value in node.residual.items():
        np.testing.assert_array_equal(restarted.residual[name], value)
