"""Model loading from local files only: HF directory, GGUF (the embedded default), NF4."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from appliance.config import ModelConfig
from appliance.forward import full_logits, prefix_states
from appliance.model import (
    ModelLoadError,
    base_parameters,
    base_shape,
    bio_tags,
    embedded_source,
    fingerprint_source,
    load_model,
    resolve_source,
)


class _RecordingHub(http.server.BaseHTTPRequestHandler):
    """A stand-in model hub that records every request made to it."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        self.send_error(404)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


LOAD_SCRIPT = """
import os, sys
import appliance
switches = [os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
print("offline-after-import", *switches)
from appliance.config import ModelConfig
from appliance.model import load_model
loaded = load_model(ModelConfig(base=sys.argv[1]), ("Chemical",), sys.argv[2])
print("loaded", loaded.fingerprint)
"""


def test_importing_sets_nothing_and_loading_never_asks_a_hub(tiny_llama: Path, tmp_path: Path):
    # Prepare: no offline switches in the environment, and a "hub" that records requests
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{hub.server_address[1]}"

    # Execute
    try:
        run = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(tiny_llama), str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.shutdown()

    # Assert
    assert run.returncode == 0, run.stderr[-2000:]
    assert "offline-after-import None None" in run.stdout  # importing has no side effects
    assert "loaded sha256:" in run.stdout
    assert _RecordingHub.requests == []  # local_files_only: nothing was asked of a hub


def test_loads_hf_directory_with_fresh_bio_head(tiny_llama: Path, tmp_path: Path):
    loaded = load_model(ModelConfig(base=str(tiny_llama)), ("Chemical", "Disease"), tmp_path)
    assert loaded.labels == ("O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease")
    assert loaded.model.score.out_features == 5
    assert loaded.model.config.id2label[1] == "B-Chemical"
    assert loaded.fingerprint.startswith("sha256:")
    assert loaded.tokenizer.is_fast


def test_attention_switch_changes_outputs_only_where_future_matters(
    tiny_llama: Path, tmp_path: Path
):
    causal = load_model(ModelConfig(base=str(tiny_llama), attention="causal"), ("X",), tmp_path)
    bidi = load_model(
        ModelConfig(base=str(tiny_llama), attention="bidirectional"), ("X",), tmp_path
    )
    bidi.model.load_state_dict(causal.model.state_dict())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out_c, out_b = full_logits(causal.model, ids, mask), full_logits(bidi.model, ids, mask)
        hf = causal.model(input_ids=ids).logits
    torch.testing.assert_close(out_c, hf, atol=1e-5, rtol=1e-5)  # causal == HF's own forward
    assert not torch.allclose(out_c[0, 0], out_b[0, 0])  # first token sees the future


def test_padding_does_not_change_valid_positions(tiny_llama: Path, tmp_path: Path):
    loaded = load_model(ModelConfig(base=str(tiny_llama)), ("X",), tmp_path)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        batched = full_logits(loaded.model, ids, mask)
        alone = full_logits(loaded.model, ids[:1, :3], mask[:1, :3])
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_missing_or_invalid_base_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no such model directory or .gguf file"):
        resolve_source(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        resolve_source(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": ')
    with pytest.raises(ModelLoadError, match="cannot read the model's config"):
        base_shape(resolve_source(str(tmp_path)), tmp_path)


def test_fingerprint_differs_between_bases(tiny_llama: Path, other_tiny_llama: Path):
    a = fingerprint_source(resolve_source(str(tiny_llama)))
    b = fingerprint_source(resolve_source(str(other_tiny_llama)))
    assert a != b
    assert a == fingerprint_source(resolve_source(str(tiny_llama)))


def test_nf4_quantizes_frozen_layers_and_keeps_trained_ones(tiny_llama: Path, tmp_path: Path):
    bnb = pytest.importorskip("bitsandbytes")
    fp32 = load_model(ModelConfig(base=str(tiny_llama)), ("X",), tmp_path)
    nf4 = load_model(
        ModelConfig(base=str(tiny_llama), quantization="nf4"), ("X",), tmp_path, "top:1"
    )
    assert isinstance(nf4.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not isinstance(nf4.model.model.layers[3].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not isinstance(nf4.model.score, bnb.nn.Linear4bit)
    nf4.model.score.load_state_dict(fp32.model.score.state_dict())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        a = full_logits(fp32.model, ids, torch.ones_like(ids))
        b = full_logits(nf4.model, ids, torch.ones_like(ids))
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() < 1.0  # 4-bit noise, not garbage


def test_embedded_gguf_model_loads_as_a_30_layer_token_classifier(tmp_path: Path):
    source = embedded_source()
    assert source.gguf_file and source.gguf_file.endswith(".gguf")
    loaded = load_model(ModelConfig(base="embedded"), ("Chemical", "Disease"), tmp_path)
    assert loaded.num_layers == 30
    assert loaded.model.config.tie_word_embeddings
    assert loaded.model.score.out_features == len(bio_tags(("Chemical", "Disease")))
    enc = loaded.tokenizer("Cisplatin nephrotoxicity", return_offsets_mapping=True)
    assert enc["offset_mapping"][-1][1] == len("Cisplatin nephrotoxicity")
    assert (tmp_path / "bases").is_dir()  # dequantized once, reused by later loads
    # counted from the config (of the materialized copy, once there is one): no weights read
    assert base_parameters(source, tmp_path) == 134_515_008
    assert base_parameters(source, tmp_path / "nothing-materialized") == 134_515_008
    assert sum(p.numel() for p in loaded.model.model.parameters()) == 134_515_008


def test_bidirectional_trained_unmasks_only_the_trained_layers(tiny_llama: Path, tmp_path: Path):
    def load(mode: str):
        return load_model(
            ModelConfig(base=str(tiny_llama), attention=mode), ("X",), tmp_path, "top:2"
        ).model

    causal, hybrid, bidi = load("causal"), load("bidirectional-trained"), load("bidirectional")
    for model in (hybrid, bidi):
        model.load_state_dict(causal.state_dict())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        # The frozen prefix (layers 0-1) keeps its pre-training causal mask...
        torch.testing.assert_close(
            prefix_states(hybrid, ids, mask, 2), prefix_states(causal, ids, mask, 2)
        )
        assert not torch.allclose(
            prefix_states(bidi, ids, mask, 2), prefix_states(causal, ids, mask, 2)
        )
        # ...while the trained layers see the right context.
        assert not torch.allclose(
            full_logits(hybrid, ids, mask)[0, 0], full_logits(causal, ids, mask)[0, 0]
        )
