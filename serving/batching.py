"""Dynamic batching: one thread groups windows of concurrent requests under a token budget."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from appliance.encoding import EncodedWindow
from serving.backends.base import Backend
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The bounded queue is full: the caller answers RESOURCE_EXHAUSTED."""


class DeadlinePassed(RuntimeError):
    """The request's deadline passed before its windows reached the model; the work was dropped."""


@dataclass
class BatchResult:
    log_probs: list[np.ndarray]
    queue_s: float
    infer_s: float


@dataclass
class _Work:
    backend: Backend
    windows: Sequence[EncodedWindow]
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[BatchResult] = field(default_factory=Future)
    admitted: bool = False  # its tokens count against max_queue_tokens until it settles

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


# A window joins a padded model batch only if it is at least this share of the batch's longest:
# padding costs as much as real tokens, a separate run only its fixed overhead (measured 9 ms,
# the time of about 7 tokens, for the 135M model in ONNX Runtime on 2 cores).
SIMILAR_LENGTH = 7 / 8


def length_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Index groups to run as one padded batch each: similar lengths, padded size within budget.

    Windows go longest first; a new group starts when the next window is shorter than
    `SIMILAR_LENGTH` of the group's longest (so at most 1/8 of a batch is padding) or when the
    padded group would exceed `budget` tokens. A group always holds one window at least.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chunks: list[list[int]] = []
    for i in order:
        group = chunks[-1] if chunks else None
        if group is not None:
            longest = lengths[group[0]]
            fits = (len(group) + 1) * longest <= budget
            if fits and lengths[i] >= SIMILAR_LENGTH * longest:
                group.append(i)
                continue
        chunks.append([i])
    return chunks


def infer_grouped(
    backend: Backend,
    windows: Sequence[EncodedWindow],
    budget: int,
    observe: Callable[[Sequence[EncodedWindow]], None] | None = None,
) -> list[np.ndarray]:
    """Each window's log-probs, in order, from one model run per `length_chunks` group."""
    out: dict[int, np.ndarray] = {}  # by window index: groups run out of order
    for chunk in length_chunks([len(w) for w in windows], budget):
        batch = [windows[i] for i in chunk]
        if observe is not None:
            observe(batch)
        for i, log_probs in zip(chunk, backend.log_probs(batch), strict=True):
            out[i] = log_probs
    return [out[i] for i in range(len(windows))]


@dataclass(frozen=True)
class QueueLimits:
    """What the batcher admits: requests waiting, and model tokens admitted but not answered."""

    max_requests: int
    max_tokens: int


class Batcher:
    """Bounded request queue + a worker thread that runs the model on grouped windows."""

    def __init__(
        self, token_budget: int, max_delay_s: float, limits: QueueLimits, metrics: ServingMetrics
    ) -> None:
        self.token_budget = token_budget
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self.limits = limits
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=limits.max_requests)
        self._carry: _Work | None = None
        self._tokens = 0  # admitted, not yet answered
        self._tokens_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ner-batcher", daemon=True)
        self._thread.start()
        metrics.watch_queue(self._queue.qsize, lambda: self._tokens)

    def submit(
        self, backend: Backend, windows: Sequence[EncodedWindow], deadline: float | None
    ) -> Future[BatchResult]:
        """Queue one request's windows for `backend` (the model it was tokenized for).

        Raises QueueFull when the request queue or the admitted tokens are at their limit.
        """
        work = _Work(backend, windows, deadline)
        need = work.tokens
        with self._tokens_lock:
            if self._tokens + need > self.limits.max_tokens:
                raise QueueFull(
                    f"the server holds {self._tokens} model tokens of admitted work; this request "
                    f"needs {need} and the limit is {self.limits.max_tokens} (max_queue_tokens)"
                )
            self._tokens += need
            work.admitted = True
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            self._release(work)
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} requests)") from None
        work.future.add_done_callback(lambda _: self._release(work))  # a cancelled future too
        return work.future

    @property
    def idle(self) -> bool:
        """No admitted work: nothing queued, nothing running."""
        return self._tokens == 0

    def _release(self, work: _Work) -> None:
        """Stop counting `work`'s tokens (once), before its caller learns the outcome."""
        with self._tokens_lock:
            if work.admitted:
                work.admitted = False
                self._tokens -= work.tokens

    def _settle(self, work: _Work, outcome: BatchResult | BaseException) -> None:
        self._release(work)
        if isinstance(outcome, BaseException):
            work.future.set_exception(outcome)
        else:
            work.future.set_result(outcome)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _next(self, timeout: float | None) -> _Work | None:
        if self._carry is not None:
            work, self._carry = self._carry, None
            return work
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else None

    def _collect(self, first: _Work) -> list[_Work]:
        """`first` plus whatever arrives within the delay, for the same model, under budget."""
        group, tokens = [first], first.tokens
        until = time.monotonic() + self.max_delay_s
        while tokens < self.token_budget:
            try:
                work = self._next(until - time.monotonic())
            except queue.Empty:
                break
            if work is None or work.backend is not first.backend:
                self._carry = work  # next batch (another model version, or the stop signal)
                break
            if tokens + work.tokens > self.token_budget:
                self._carry = work
                break
            group.append(work)
            tokens += work.tokens
        return group

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            group = self._collect(first)
            self._run(group)

    def _live(self, group: list[_Work]) -> list[_Work]:
        now = time.monotonic()
        live = []
        for work in group:
            if work.deadline is not None and work.deadline <= now:
                self._settle(work, DeadlinePassed("the deadline passed while queued"))
            elif work.future.set_running_or_notify_cancel():
                live.append(work)
        return live

    def _run(self, group: list[_Work]) -> None:
        live = self._live(group)
        if not live:
            return
        started = time.monotonic()
        windows = [w for work in live for w in work.windows]
        try:
            out = self._infer(live[0].backend, windows)
        except Exception as err:  # noqa: BLE001 - the model failed: every waiting request learns why
            log.exception("model batch of %d windows failed", len(windows))
            for work in live:
                self._settle(work, err)
            return
        infer_s = time.monotonic() - started
        self.metrics.inference_seconds.observe(infer_s)
        at = 0
        for work in live:
            queue_s = started - work.enqueued
            self.metrics.queue_seconds.observe(queue_s)
            n = len(work.windows)
            self._settle(work, BatchResult(out[at : at + n], queue_s, infer_s))
            at += n

    def _infer(self, backend: Backend, windows: list[EncodedWindow]) -> list[np.ndarray]:
        def observe(batch: Sequence[EncodedWindow]) -> None:
            self.metrics.batch_windows.observe(len(batch))
            self.metrics.batch_tokens.observe(sum(len(w) for w in batch))

        return infer_grouped(backend, windows, self.token_budget, observe)
