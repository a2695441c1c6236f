"""The engine's windows: a causal package is served without right context, others with it."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from transformers import PreTrainedTokenizerBase

from appliance.encoding import EncodedWindow
from appliance.model import embedded_source, load_tokenizer
from serving.backends.base import Backend
from serving.engine import Engine, NoteRequest, RequestError, load_served_model
from serving.metrics import ServingMetrics
from tests.serving.servers import config_for


def test_causal_package_is_served_without_right_context(tiny_package: Path, tmp_path: Path):
    causal = tmp_path / "causal"
    shutil.copytree(tiny_package, causal)
    meta = json.loads((causal / "package.json").read_text(encoding="utf-8"))
    assert meta["attention"] != "causal"
    meta["attention"] = "causal"
    (causal / "package.json").write_text(json.dumps(meta), encoding="utf-8")
    context = int(meta["windowing"]["context_tokens"])
    config = config_for(tiny_package, state_dir=tmp_path / "state")
    for path, right in ((tiny_package, context), (causal, 0)):
        model = load_served_model(config, path, "v1")
        assert (model.context_tokens, model.right_tokens) == (context, right)
        model.backend.close()


def test_a_swapped_out_model_is_released_once_no_request_holds_it(
    tiny_package: Path, tmp_path: Path
):
    # Prepare
    config = config_for(tiny_package, state_dir=tmp_path)
    engine = Engine(config, ServingMetrics())
    try:
        engine.install(load_served_model(config, tiny_package, "v1"))
        assert not engine.release_retired()  # nothing swapped out yet
        in_flight = engine.model  # a request still holding v1

        # Execute
        engine.install(load_served_model(config, tiny_package, "v2"))
        held = engine.release_retired()
        old = weakref.ref(in_flight)
        del in_flight
        released = engine.release_retired()

        # Assert
        assert (held, released) == (False, True)
        assert old() is None and not engine.release_retired()
    finally:
        engine.stop()


class _Wrapped(Backend):
    """The tiny package's backend, seen through another object: the tests below change one part."""

    def __init__(self, tiny: Backend) -> None:
        super().__init__(tiny.package_path, tiny.options)
        self._tiny = tiny

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tiny.tokenizer

    @property
    def labels(self) -> tuple[str, ...]:
        return self._tiny.labels

    @property
    def meta(self) -> dict[str, Any]:
        return self._tiny.meta

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        return self._tiny.log_probs(windows)


class _EmbeddedTokens(_Wrapped):
    """The embedded model's tokenizer, which drops some control characters entirely; the model
    must never run (a note without words never does)."""

    def __init__(self, tiny: Backend) -> None:
        super().__init__(tiny)
        self._tokenizer = load_tokenizer(embedded_source())

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        raise AssertionError("a note without words reached the model")


def test_a_note_with_no_word_the_model_reads_is_invalid_argument(
    tiny_package: Path, tmp_path: Path
):
    # Prepare: SmolLM2's tokenizer gives \x04 and \x14 no token, so the note has no word
    config = config_for(tiny_package, state_dir=tmp_path)
    engine = Engine(config, ServingMetrics())
    tiny = load_served_model(config, tiny_package, "v1")
    engine.install(replace(tiny, backend=_EmbeddedTokens(tiny.backend)))
    note = NoteRequest("n1", "\x14\x04 \x14", 0, (), False)
    try:
        # Execute
        (answer,) = engine.analyze([note], None)

        # Assert
        assert isinstance(answer, RequestError)
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "note 'n1': no word the model can read" in answer.message
    finally:
        engine.stop()


class _Spy(_Wrapped):
    """Notes the threads that read the tokenizer."""

    def __init__(self, tiny: Backend) -> None:
        super().__init__(tiny)
        self.threads: set[str] = set()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        self.threads.add(threading.current_thread().name)
        return self._tiny.tokenizer


def test_notes_from_every_handler_thread_are_tokenized_on_one_thread(
    tiny_package: Path, tmp_path: Path
):
    """The tokenizer keeps memory per calling thread: one thread, one share of it."""
    # Prepare
    config = config_for(tiny_package, state_dir=tmp_path)
    engine = Engine(config, ServingMetrics())
    tiny = load_served_model(config, tiny_package, "v1")
    spy = _Spy(tiny.backend)
    engine.install(replace(tiny, backend=spy))
    notes = [NoteRequest(f"n{i}", f"Aspirin {i} caused rash.", 0, (), False) for i in range(24)]
    try:
        # Execute
        with ThreadPoolExecutor(8, thread_name_prefix="handler") as pool:
            answers = list(pool.map(lambda n: engine.analyze([n], None)[0], notes))

        # Assert
        assert all(not isinstance(a, RequestError) for a in answers)
        assert spy.threads == {"ner-encode_0"}
    finally:
        engine.stop()


class _Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_garbage_cycles_are_collected_once_requests_are_answered_and_the_engine_is_idle(
    tiny_package: Path, tmp_path: Path
):
    # Prepare
    config = config_for(tiny_package, state_dir=tmp_path)
    engine = Engine(config, ServingMetrics())
    engine.install(load_served_model(config, tiny_package, "v1"))
    try:
        assert not engine.collect_when_idle()  # nothing answered yet
        engine.analyze([NoteRequest("n1", "Aspirin caused rash.", 0, (), False)], None)
        gc.disable()  # the automatic collector off: only the engine's pass may free the cycle
        try:
            cycle = _Cycle()
            left = weakref.ref(cycle)
            del cycle

            # Execute
            collected, again = engine.collect_when_idle(), engine.collect_when_idle()
        finally:
            gc.enable()

        # Assert
        assert (collected, again) == (True, False)  # once per stretch of answered work
        assert left() is None
    finally:
        engine.stop()
