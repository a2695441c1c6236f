"""The served model and the annotation path: validate, tokenize, batch, decode, convert offsets."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from appliance.decoding import assemble
from appliance.encoding import EncodedWindow, encode_notes
from appliance.notes import EntitySpan, Note
from appliance.windows import right_context
from serving.api import ner_pb2
from serving.backends import load_backend
from serving.backends.base import Backend, BackendOptions
from serving.batching import Batcher, BatchResult, DeadlinePassed, QueueFull, QueueLimits
from serving.config import ServingConfig
from serving.metrics import ServingMetrics
from serving.offsets import UNITS, offset_table
from serving.rpc import RequestError

log = logging.getLogger(__name__)

# Annotated by every new version before it serves: loading alone does not prove it decodes.
SMOKE_TEXT = "The patient developed hepatotoxicity after taking acetaminophen 500 mg daily."


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version; requests hold a reference so a swap never cuts them off."""

    backend: Backend
    version: str
    max_tokens: int
    context_tokens: int
    right_tokens: int  # context after a core: none for a causal model (it would not read it)
    categories: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return str(self.backend.meta.get("base", {}).get("fingerprint", ""))

    def encode(self, notes: Sequence[Note]) -> list[EncodedWindow]:
        return encode_notes(
            self.backend.tokenizer,
            notes,
            None,
            self.max_tokens,
            self.context_tokens,
            self.right_tokens,
        )


def load_served_model(config: ServingConfig, path: Path, version: str) -> ServedModel:
    """Load `path` with the configured backend and prove it annotates the smoke sentence."""
    options = BackendOptions(
        state_dir=config.state_dir,
        base=config.base,
        threads=config.threads,
        release_memory=config.release_memory,
        work_turn=config.registry,
    )
    backend = load_backend(config.backend, path, options)
    windowing = backend.meta.get("windowing", {})
    categories = sorted({tag[2:] for tag in backend.labels if tag[:2] in ("B-", "I-")})
    context = int(windowing.get("context_tokens", 64))
    attention = str(backend.meta.get("attention", "bidirectional"))
    model = ServedModel(
        backend,
        version,
        int(windowing.get("max_tokens", 512)),
        context,
        right_context(attention, context),
        tuple(categories),
    )
    smoke_check(model)
    return model


def smoke_check(model: ServedModel) -> None:
    """Raise ValueError unless the model scores and decodes a fixed sentence into valid spans."""
    windows = model.encode([Note("smoke", SMOKE_TEXT)])
    log_probs = model.backend.log_probs(windows)
    for w, lp in zip(windows, log_probs, strict=True):
        if lp.shape != (len(w.core_words), len(model.backend.labels)):
            raise ValueError(
                f"smoke check: log-probs of shape {lp.shape} for {len(w.core_words)} words"
            )
    (prediction,) = assemble(1, windows, log_probs, model.backend.labels)
    for span in prediction.spans:
        if not 0 <= span.start < span.end <= len(SMOKE_TEXT) or span.label not in model.categories:
            raise ValueError(f"smoke check: span {span.start}-{span.end} {span.label!r} is invalid")


@dataclass(frozen=True)
class NoteRequest:
    """One note to annotate, as the servicer received it (validated by the engine)."""

    note_id: str
    text: str
    offset_unit: int
    categories: tuple[str, ...]
    include_text: bool

    @property
    def where(self) -> str:
        """How an error message names this note."""
        return f"note {self.note_id!r}" if self.note_id else "note"

    @classmethod
    def from_proto(cls, req: ner_pb2.AnalyzeRequest) -> NoteRequest:
        return cls(req.note_id, req.text, req.offset_unit, tuple(req.categories), req.include_text)


class Engine:
    """Holds the current model and annotates notes through the shared batcher."""

    def __init__(self, config: ServingConfig, metrics: ServingMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.model: ServedModel | None = None
        self.accepting = True
        limits = QueueLimits(config.max_queue, config.max_queue_tokens)
        self.batcher = Batcher(
            config.token_budget, config.max_queue_delay_ms / 1000, limits, metrics
        )
        # Notes are tokenized and windowed on one thread: fast tokenizers refuse concurrent use,
        # and the tokenizer library keeps memory per calling thread that grows with what that
        # thread has read, so sixteen handler threads tokenizing in turn held sixteen times it.
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ner-encode")
        self._answered = self._collected_at = 0  # batches run; how many when last collected
        self._retired: list[weakref.ref[ServedModel]] = []  # swapped out, maybe still in use
        self._retired_lock = threading.Lock()

    def stop(self) -> None:
        """Stop the batcher and the encoding thread (after the last request)."""
        self.batcher.stop()
        self._encoder.shutdown(wait=False, cancel_futures=True)

    def install(self, model: ServedModel) -> None:
        """Swap in `model` (one reference assignment: requests already running keep theirs)."""
        if self.model is not None:  # freed once its last request ends; then its memory goes back
            with self._retired_lock:
                self._retired.append(weakref.ref(self.model))
        self.model = model
        self.metrics.watch_gpu()
        self.metrics.model.info(
            {
                "version": model.version,
                "backend": model.backend.name,
                "quantization": model.backend.quantization,
            }
        )

    def serving_model(self) -> ServedModel:
        model = self.model
        if model is None or not self.accepting:
            state = "loading a model" if model is None else "draining"
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"the server is {state}; retry later")
        return model

    def check(self, req: NoteRequest, model: ServedModel) -> None:
        """Raise INVALID_ARGUMENT saying what is wrong with `req` and which limit it broke."""
        where = req.where
        if not req.text.strip():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: text is empty")
        if len(req.text) > self.config.max_note_chars:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: text has {len(req.text)} characters; the limit is "
                f"{self.config.max_note_chars} (max_note_chars)",
            )
        if req.offset_unit not in UNITS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: offset_unit {req.offset_unit} is unknown; use CODE_POINT, UTF16 or UTF8",
            )
        unknown = sorted(set(req.categories) - set(model.categories))
        if unknown:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: unknown categories {unknown}; this model has {list(model.categories)}",
            )

    def check_batch_size(self, count: int) -> None:
        if count > self.config.max_batch_notes:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the batch has {count} notes; the limit is {self.config.max_batch_notes} "
                "(max_batch_notes)",
            )

    def analyze(
        self, requests: Sequence[NoteRequest], deadline: float | None
    ) -> list[ner_pb2.AnalyzeResponse | RequestError]:
        """Annotate valid notes in one queued unit; invalid ones get their error in place.

        Raises RequestError for the whole request when it cannot be admitted (RESOURCE_EXHAUSTED)
        or the server is not serving (UNAVAILABLE).
        """
        model = self.serving_model()
        results: list[ner_pb2.AnalyzeResponse | RequestError | None] = []
        for req in requests:
            try:
                self.check(req, model)
                results.append(None)
            except RequestError as err:
                results.append(err)
        valid = [i for i, r in enumerate(results) if r is None]
        if valid:
            answers = self._run(model, [requests[i] for i in valid], deadline)
            for i, answer in zip(valid, answers, strict=True):
                results[i] = answer
        return [r for r in results if r is not None]

    def _admit(
        self, reqs: Sequence[NoteRequest], windows: Sequence[EncodedWindow]
    ) -> tuple[list[EncodedWindow], dict[int, RequestError]]:
        """The windows of the notes within `max_request_tokens`; an error for each note over it
        and for each note with no word the model reads.

        Raises RESOURCE_EXHAUSTED when the admitted notes together exceed the limit.
        """
        limit = self.config.max_request_tokens
        tokens = [0] * len(reqs)
        for w in windows:
            tokens[w.note_index] += len(w)
        refused: dict[int, RequestError] = {}
        for i, (req, count) in enumerate(zip(reqs, tokens, strict=True)):
            where = req.where
            if count > limit:
                refused[i] = RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: {count} model tokens; the limit is {limit} (max_request_tokens); "
                    "split the note",
                )
            elif count == 0:  # e.g. only control characters the tokenizer drops
                refused[i] = RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: no word the model can read (only whitespace, control or format "
                    "characters)",
                )
        total = sum(count for i, count in enumerate(tokens) if i not in refused)
        if total > limit:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request's notes hold {total} model tokens; the limit is {limit} "
                "(max_request_tokens); send fewer notes per request",
            )
        return [w for w in windows if w.note_index not in refused], refused

    def _infer(
        self, model: ServedModel, windows: Sequence[EncodedWindow], deadline: float | None
    ) -> BatchResult:
        if not windows:
            return BatchResult([], 0.0, 0.0)
        try:
            future = self.batcher.submit(model.backend, windows, deadline)
        except QueueFull as err:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{err}; retry later") from None
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) + 1.0
            return future.result(timeout=timeout)
        except (DeadlinePassed, TimeoutError):
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed; the work was dropped"
            ) from None

    def _run(
        self, model: ServedModel, reqs: Sequence[NoteRequest], deadline: float | None
    ) -> list[ner_pb2.AnalyzeResponse | RequestError]:
        try:
            return self._annotate(model, reqs, deadline)
        finally:
            self._answered += 1
            if self.batcher.idle:  # the last request out gives the memory of all of them back
                model.backend.release_memory()

    def collect_when_idle(self) -> bool:
        """With no work admitted and requests answered since the last call: collect the reference
        cycles that finished requests left (the cyclic collector makes a full pass only now and
        then, so between passes they pile up: the C heap and Python's arenas grew at rest over a
        soak) and give the memory back. Off the request path (the model watcher's thread); True
        when it collected."""
        answered = self._answered
        if not self.batcher.idle or answered == self._collected_at:
            return False
        self._collected_at = answered
        gc.collect()
        model = self.model
        if model is not None:
            model.backend.release_memory()
        return True

    def release_retired(self) -> bool:
        """Give back the memory of swapped-out models that no request uses any more.

        A model is freed when its last request ends, some of it only by the cyclic garbage
        collector, and its pages stay in the C heap until trimmed: without this, resident memory
        grew by about a model's size with every swap under load. True when one was released.
        """
        with self._retired_lock:
            if not self._retired:
                return False
        gc.collect()
        with self._retired_lock:
            alive = [ref for ref in self._retired if ref() is not None]
            freed = len(alive) < len(self._retired)
            self._retired = alive
        model = self.model
        if freed and model is not None:
            model.backend.release_memory()
        return freed

    def _annotate(
        self, model: ServedModel, reqs: Sequence[NoteRequest], deadline: float | None
    ) -> list[ner_pb2.AnalyzeResponse | RequestError]:
        started = time.monotonic()
        notes = [Note(r.note_id or f"note-{i}", r.text) for i, r in enumerate(reqs)]
        windows = self._encoder.submit(model.encode, notes).result()
        tokenized = time.monotonic()
        windows, refused = self._admit(reqs, windows)
        batch = self._infer(model, windows, deadline)
        decoded = time.monotonic()
        predictions = assemble(len(notes), windows, batch.log_probs, model.backend.labels)
        timings = ner_pb2.Timings(
            queue_ms=batch.queue_s * 1000,
            tokenize_ms=(tokenized - started) * 1000,
            infer_ms=batch.infer_s * 1000,
        )
        out: list[ner_pb2.AnalyzeResponse | RequestError] = [
            refused[i] if i in refused else self._response(model, req, i, windows, pred.spans)
            for i, (req, pred) in enumerate(zip(reqs, predictions, strict=True))
        ]
        post_ms = (time.monotonic() - decoded) * 1000
        for response in out:
            if isinstance(response, ner_pb2.AnalyzeResponse):
                response.timings.CopyFrom(timings)
                response.timings.post_ms = post_ms
        return out

    def _response(
        self,
        model: ServedModel,
        req: NoteRequest,
        index: int,
        windows: Sequence[EncodedWindow],
        spans: Sequence[EntitySpan],
    ) -> ner_pb2.AnalyzeResponse:
        own = [w for w in windows if w.note_index == index]
        self.metrics.note_windows.observe(len(own))
        unit = UNITS[req.offset_unit]
        table = offset_table(req.text, unit)
        response = ner_pb2.AnalyzeResponse(
            note_id=req.note_id,
            model_version=model.version,
            token_count=sum(len(w) for w in own),
            windows=len(own),
            offset_unit=ner_pb2.OffsetUnit.Name(unit),
        )
        wanted = set(req.categories)
        for span in spans:
            if wanted and span.label not in wanted:
                continue
            self.metrics.entities.labels(span.label).inc()
            entity = response.entities.add(
                id=f"T{len(response.entities) + 1}",
                begin=table[span.start],
                end=table[span.end],
                category=span.label,
                score=float(span.score or 0.0),
            )
            if req.include_text:
                entity.text = req.text[span.start : span.end]
        return response
