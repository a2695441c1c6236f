"""The frozen-prefix cache is exact: same loss and gradients as the uncached path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from appliance.cache import PrefixCache
from appliance.config import ModelConfig
from appliance.encoding import encode_notes
from appliance.layers import LayerSelection
from appliance.model import load_model
from appliance.objective import batch_loss
from appliance.readers import read_notes

DATA = Path(__file__).resolve().parents[2] / "data" / "bc5cdr"


def _setup(tiny_llama: Path, tmp_path: Path, attention: str, spec: str = "top:2"):
    loaded = load_model(
        ModelConfig(base=str(tiny_llama), attention=attention),
        ("Chemical", "Disease"),
        tmp_path,
        spec,
    )
    selection = LayerSelection.parse(spec, loaded.num_layers)
    selection.apply(loaded.model)
    notes = read_notes(str(DATA / "devel.tsv")).notes[:24]
    windows = encode_notes(loaded.tokenizer, notes, loaded.labels, 64, 8)
    return loaded, selection, windows


def _loss_and_grads(loaded, windows, states, first):
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    torch.manual_seed(7)  # same dropout mask on both paths
    loss = batch_loss(loaded, windows, states, first)
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("attention", ["bidirectional", "causal", "bidirectional-trained"])
def test_cached_loss_and_gradients_match_uncached(tiny_llama: Path, tmp_path: Path, attention: str):
    # Prepare
    loaded, selection, windows = _setup(tiny_llama, tmp_path, attention)
    cache = PrefixCache(loaded, selection.first, tmp_path / "cache")
    states, hit = cache.states(windows)
    loaded.model.train()
    batch = list(range(3, 11))  # a batch of mixed lengths, computed in other cache batches
    # Execute
    loss_u, grads_u = _loss_and_grads(loaded, [windows[i] for i in batch], None, 0)
    loss_c, grads_c = _loss_and_grads(
        loaded, [windows[i] for i in batch], [states[i] for i in batch], selection.first
    )
    # Assert
    assert not hit
    assert selection.first == 2
    torch.testing.assert_close(loss_c, loss_u, atol=1e-5, rtol=0)
    assert len(grads_c) == len(grads_u) > 0
    for g_c, g_u in zip(grads_c, grads_u, strict=True):
        torch.testing.assert_close(g_c, g_u, atol=1e-5, rtol=1e-5)


def test_cache_is_reused_across_runs_and_keyed_by_data_and_model(tiny_llama: Path, tmp_path: Path):
    loaded, selection, windows = _setup(tiny_llama, tmp_path, "bidirectional")
    first, hit_first = PrefixCache(loaded, selection.first, tmp_path / "c").states(windows)
    again, hit_again = PrefixCache(loaded, selection.first, tmp_path / "c").states(windows)
    other_data, hit_other = PrefixCache(loaded, selection.first, tmp_path / "c").states(windows[1:])
    deeper, hit_deeper = PrefixCache(loaded, 3, tmp_path / "c").states(windows)
    assert (hit_first, hit_again, hit_other, hit_deeper) == (False, True, False, False)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 3
    assert not torch.equal(first[0], deeper[0])


def test_cache_key_changes_with_attention_mode(tiny_llama: Path, tmp_path: Path):
    bidi, selection, windows = _setup(tiny_llama, tmp_path, "bidirectional")
    causal, _, _ = _setup(tiny_llama, tmp_path, "causal")
    path_bidi = PrefixCache(bidi, selection.first, tmp_path / "c").path_for(windows)
    path_causal = PrefixCache(causal, selection.first, tmp_path / "c").path_for(windows)
    assert path_bidi != path_causal
    # Below the trained layers, bidirectional-trained is causal: the same prefix, the same entry.
    hybrid, _, _ = _setup(tiny_llama, tmp_path, "bidirectional-trained")
    assert PrefixCache(hybrid, selection.first, tmp_path / "c").path_for(windows) == path_causal


def test_corrupt_cache_file_is_recomputed(tiny_llama: Path, tmp_path: Path):
    loaded, selection, windows = _setup(tiny_llama, tmp_path, "bidirectional")
    cache = PrefixCache(loaded, selection.first, tmp_path / "c")
    good, _ = cache.states(windows)
    cache.path_for(windows).write_bytes(b"not a safetensors file")
    again, hit = cache.states(windows)
    assert not hit
    for a, b in zip(good, again, strict=True):
        torch.testing.assert_close(a, b)


def test_a_cache_build_shows_its_progress_in_windows_and_a_hit_shows_none(
    tiny_llama: Path, tmp_path: Path, capsys
):
    loaded, selection, windows = _setup(tiny_llama, tmp_path, "bidirectional")
    quiet, _ = PrefixCache(loaded, selection.first, tmp_path / "q").states(windows)
    assert "prefix cache" not in capsys.readouterr().err
    shown, hit = PrefixCache(loaded, selection.first, tmp_path / "c", progress=True).states(windows)
    err = capsys.readouterr().err
    assert not hit and "prefix cache" in err and f"{len(windows)}/{len(windows)}" in err
    again, hit = PrefixCache(loaded, selection.first, tmp_path / "c", progress=True).states(windows)
    assert hit and "prefix cache" not in capsys.readouterr().err
    for a, b in zip(quiet, shown, strict=True):
        assert torch.equal(a, b)
