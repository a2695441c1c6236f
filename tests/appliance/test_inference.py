"""Inference windows: a causal model reads no right context, so dropping it changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.config import ModelConfig
from appliance.encoding import encode_notes
from appliance.inference import Annotator, window_log_probs
from appliance.model import LoadedModel, load_model
from appliance.notes import Note

NOTE = Note("n", " ".join(f"aspirin{i % 7} fever{i % 5}." for i in range(30)))


def _tiny(base: Path, state_dir: Path, attention: str) -> LoadedModel:
    config = ModelConfig(base=str(base), attention=attention)
    return load_model(config, ("Chemical", "Disease"), state_dir, "top:2")


@pytest.mark.parametrize(("attention", "unchanged"), [("causal", True), ("bidirectional", False)])
def test_right_context_matters_only_without_causal_mask(
    tiny_llama: Path, tmp_path: Path, attention: str, unchanged: bool
) -> None:
    loaded = _tiny(tiny_llama, tmp_path, attention)
    both = encode_notes(loaded.tokenizer, [NOTE], None, 40, 6)
    left = encode_notes(loaded.tokenizer, [NOTE], None, 34, 6, 0)  # same cores, no right context
    assert [w.window.core_start for w in both] == [w.window.core_start for w in left]
    assert all(len(a) > len(b) for a, b in zip(both[:-1], left[:-1], strict=True))
    a = window_log_probs(loaded, both)
    b = window_log_probs(loaded, left)
    same = all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))
    assert same is unchanged


@pytest.mark.parametrize(("attention", "reads_right"), [("causal", False), ("bidirectional", True)])
def test_annotator_adds_right_context_only_when_read(
    tiny_llama: Path, tmp_path: Path, attention: str, reads_right: bool
) -> None:
    windows = Annotator(_tiny(tiny_llama, tmp_path, attention), 40, 6).windows([NOTE])
    assert len(windows) > 2
    after_core = [len(w.window.words) - 1 - w.core_words[-1] for w in windows[:-1]]
    assert any(after_core) is reads_right
