"""The real paths at the product's size: a random-weight LLaMA 3.2-1B-shape checkpoint.

Opt in with `pytest --scale` (tests marked `scale`): the checkpoint is 2.5 GB (written once into
the state dir by benchmarks/llama_1b_shape.py and reused), training and the ONNX export each take
minutes and up to ~13 GB of memory on the 2-core, 24 GB machine (benchmarks/results/scale.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ApplianceConfig, ModelConfig
from appliance.model import load_model
from benchmarks.llama_1b_shape import LLAMA_3_2_1B, make_llama_1b_shape
from serving.backends import load_backend
from serving.backends.base import BackendOptions
from serving.backends.onnx_export import INFO_FILE, MODEL_FILE, TOKENIZER_DIR
from serving.client import NerClient
from tests.serving.servers import config_for, running

pytestmark = pytest.mark.scale
ROOT = Path(__file__).resolve().parent.parent
LABELS = ("Chemical", "Disease")
NOTE = "Naloxone reverses the antihypertensive effect of clonidine in hypertensive patients."
# 16 layers of 60.8M parameters, the 128,256 x 2048 embedding (tied), norms, a 5-tag head
PARAMETERS = 1_235_824_645


@pytest.fixture(scope="module")
def shape_dir() -> Path:
    return make_llama_1b_shape(Path(ApplianceConfig().state_dir))


def _forward(loaded) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    batch = loaded.tokenizer([NOTE], return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits.float().numpy()


def test_loads_in_fp32_and_in_nf4(shape_dir: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    loaded = load_model(ModelConfig(base=str(shape_dir)), LABELS, tmp_path, "top:8")
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (16, 2048, 128256)
    assert config.rope_scaling["rope_type"] == LLAMA_3_2_1B["rope_scaling"]["rope_type"]
    assert sum(p.numel() for p in loaded.model.parameters()) == PARAMETERS
    assert np.isfinite(_forward(loaded)).all()
    del loaded
    nf4 = load_model(
        ModelConfig(base=str(shape_dir), quantization="nf4"), LABELS, tmp_path, "top:8"
    )
    layers = nf4.model.model.layers
    assert isinstance(layers[0].mlp.down_proj, bnb.nn.Linear4bit)  # frozen: 4-bit
    assert not isinstance(layers[15].mlp.down_proj, bnb.nn.Linear4bit)  # trained: full precision
    assert np.isfinite(_forward(nf4)).all()


def test_train_export_and_serve_one_note(shape_dir: Path, tmp_path: Path) -> None:
    package = tmp_path / "package"
    argv = [sys.executable, "-m", "appliance.cli", "train", "--base", str(shape_dir)]
    argv += ["--state-dir", str(tmp_path), "--train", str(ROOT / "data/bc5cdr/train.tsv")]
    argv += ["--max-train-notes", "8", "--epochs", "1", "--batch-size", "4"]  # layers: auto
    argv += ["--attention", "causal", "--no-progress", "--out", str(package)]
    subprocess.run(argv, check=True, cwd=ROOT, timeout=1800)
    meta = json.loads((package / "package.json").read_text())
    assert meta["layers"] == {"spec": "top:8", "indices": list(range(8, 16))}

    options = BackendOptions(state_dir=tmp_path, base=str(shape_dir))
    backend = load_backend("onnx-int4", package, options)  # exports once, in a subprocess
    export_dir = backend.export_dir  # type: ignore[attr-defined]
    assert sorted(p.name for p in export_dir.iterdir()) == [INFO_FILE, MODEL_FILE, TOKENIZER_DIR]
    backend.close()

    config = config_for(package, backend="onnx-int4", state_dir=tmp_path, base=str(shape_dir))
    with running(config) as (_, port), NerClient(f"127.0.0.1:{port}", timeout=600) as client:
        answer = client.analyze(NOTE, note_id="n1")
    assert answer.token_count > 0 and answer.windows == 1
    for entity in answer.entities:  # random weights find anything or nothing, but in the text
        assert 0 <= entity.begin < entity.end <= len(NOTE)


def test_one_federated_round_between_two_supernodes(shape_dir: Path, tmp_path: Path) -> None:
    """TLS SuperLink + 2 SuperNodes, LoRA rank 8 on `top:8`, the frozen part in NF4 (auto). A
    `layers` round does not fit this machine with two nodes and the ServerApp (scale.md)."""
    from benchmarks.scale_federation import federated_round, run_config

    cfg = run_config(str(shape_dir), "lora", "none", "auto")
    state = Path(ApplianceConfig().state_dir)
    done = federated_round(str(shape_dir), state, tmp_path, cfg, notes=4, heldout=4)
    assert done["ok"], done["tail"]
    # rank 8 A and B of q, k, v, o, gate, up, down in 8 layers, and the head, in fp32
    per_layer = 8 * (4096 + 2560 + 2560 + 4096 + 3 * 10240)
    adapters = 4 * (8 * per_layer + 5 * 2048 + 5)
    for node in done["nodes"].values():
        assert {"round_completed", "promotion"} <= set(node["events"])
        for direction in ("bytes_sent", "bytes_received"):
            assert adapters <= node["round"][direction] < adapters * 1.01
