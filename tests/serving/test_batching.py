"""Dynamic batching: windows of similar length share a padded model batch, results keep order."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from appliance.encoding import EncodedWindow
from appliance.notes import Note
from serving.backends.base import Backend
from serving.batching import SIMILAR_LENGTH, Batcher, QueueFull, QueueLimits, length_chunks
from serving.engine import load_served_model
from serving.metrics import ServingMetrics
from tests.serving.servers import config_for


def test_a_short_last_window_is_not_padded_to_the_long_ones():
    assert length_chunks([256, 256, 70], 1024) == [[0, 1], [2]]
    assert length_chunks([256, 256, 256, 256, 256], 1024) == [[0, 1, 2, 3], [4]]
    assert length_chunks([2000, 10], 1024) == [[0], [1]]  # over budget alone: still runs


@pytest.mark.parametrize("seed", range(20))
def test_groups_cover_every_window_once_with_little_padding(seed: int):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
    budget = rng.choice([64, 256, 1024])
    chunks = length_chunks(lengths, budget)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        longest = max(lengths[i] for i in chunk)
        assert len(chunk) == 1 or len(chunk) * longest <= budget
        assert all(lengths[i] >= SIMILAR_LENGTH * longest for i in chunk)


class RecordingBackend(Backend):
    """A real backend whose batches are recorded (window lengths per model call)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.package_path, inner.options)
        self.inner = inner
        self.calls: list[list[int]] = []

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.inner.tokenizer

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    @property
    def meta(self):  # type: ignore[no-untyped-def]
        return self.inner.meta

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        self.calls.append([len(w) for w in windows])
        return self.inner.log_probs(windows)


def test_batcher_returns_each_windows_own_log_probs(tiny_package: Path, tmp_path: Path):
    model = load_served_model(config_for(tiny_package, state_dir=tmp_path), tiny_package, "v1")
    words = "aspirin caused severe nausea in the patient after surgery ."
    notes = [Note(f"n{i}", " ".join([words] * reps)) for i, reps in enumerate((9, 1, 4, 2))]
    windows = model.encode(notes)
    assert len({len(w) for w in windows}) > 2  # lengths differ: padding would be needed
    alone = [model.backend.log_probs([w])[0] for w in windows]
    backend = RecordingBackend(model.backend)
    batcher = Batcher(4096, 0.0, QueueLimits(8, 1 << 20), ServingMetrics())
    try:
        result = batcher.submit(backend, windows, None).result(timeout=60)
    finally:
        batcher.stop()
    for got, want in zip(result.log_probs, alone, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert sorted(n for call in backend.calls for n in call) == sorted(len(w) for w in windows)
    for call in backend.calls:
        assert min(call) >= SIMILAR_LENGTH * max(call)
    model.backend.close()


class GatedBackend(RecordingBackend):
    """A real backend that holds each model call until the test opens the gate."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = threading.Event()

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        assert self.gate.wait(30)
        return super().log_probs(windows)


def test_admitted_tokens_are_bounded_and_released(tiny_package: Path, tmp_path: Path):
    # Prepare
    model = load_served_model(config_for(tiny_package, state_dir=tmp_path), tiny_package, "v1")
    windows = model.encode([Note("n", "aspirin caused nausea in the patient .")])
    size = sum(len(w) for w in windows)
    backend = GatedBackend(model.backend)
    metrics = ServingMetrics()
    batcher = Batcher(4096, 0.0, QueueLimits(8, 2 * size + 1), metrics)
    try:
        # Execute
        first = batcher.submit(backend, windows, None)
        second = batcher.submit(backend, windows, None)
        with pytest.raises(QueueFull, match=rf"holds {2 * size} model tokens.*max_queue_tokens"):
            batcher.submit(backend, windows, None)
        held = metrics.value("appliance_ner_queue_tokens")
        backend.gate.set()
        first.result(timeout=60)
        second.result(timeout=60)
    finally:
        backend.gate.set()
        batcher.stop()

    # Assert
    assert held == 2 * size
    assert metrics.value("appliance_ner_queue_tokens") == 0
