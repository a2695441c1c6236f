"""Prometheus metrics of one server, on their own registry and exporter port."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving import heap

if TYPE_CHECKING:
    from appliance.note_store import StoreStats

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
log = logging.getLogger(__name__)


class ServingMetrics:
    """Everything the exporter shows; a registry per server so tests can run several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._gpu: Gauge | None = None
        r = self.registry
        ProcessCollector(registry=r)  # process CPU seconds, resident memory, open fds
        self.requests = Counter(
            "appliance_ner_requests",
            "RPCs by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "appliance_ner_request_seconds",
            "RPC duration",
            ["method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "appliance_ner_queue_seconds", "wait in the batch queue", buckets=_LATENCY, registry=r
        )
        self.inference_seconds = Histogram(
            "appliance_ner_inference_seconds", "model time per batch", buckets=_LATENCY, registry=r
        )
        self.batch_windows = Histogram(
            "appliance_ner_batch_windows", "windows per model batch", buckets=_COUNTS, registry=r
        )
        self.batch_tokens = Histogram(
            "appliance_ner_batch_tokens", "tokens per model batch", buckets=_TOKENS, registry=r
        )
        self.note_windows = Histogram(
            "appliance_ner_note_windows", "windows per note", buckets=_COUNTS, registry=r
        )
        self.entities = Counter(
            "appliance_ner_entities", "entities returned by category", ["category"], registry=r
        )
        self.in_flight = Gauge("appliance_ner_in_flight", "RPCs being handled", registry=r)
        self.queue_depth = Gauge("appliance_ner_queue_depth", "requests waiting", registry=r)
        self.queue_tokens = Gauge(
            "appliance_ner_queue_tokens", "model tokens admitted, not yet answered", registry=r
        )
        self.model = Info("appliance_ner_model", "the served model", registry=r)
        self.swaps = Counter("appliance_ner_model_swaps", "model versions swapped in", registry=r)
        self.swap_failures = Counter(
            "appliance_ner_model_swap_failures", "versions that failed to load or smoke", registry=r
        )
        # Failed ONNX exports of a new version; reason "no_space": the state dir's disk is full.
        self.export_failures = Counter(
            "appliance_ner_export_failures",
            "model exports that failed, by reason (no_space, other)",
            ["reason"],
            registry=r,
        )
        self.heap = Gauge(
            "appliance_ner_heap_bytes",
            "C heap: bytes allocated by the program, and (jemalloc) resident with the "
            "allocator's own free pages",
            ["state"],
            registry=r,
        )
        for state in heap.stats():
            self.heap.labels(state).set_function(partial(_heap_bytes, state))
        self._curation_metrics()
        self.watch_gpu()

    def _curation_metrics(self) -> None:
        r = self.registry
        self.permission_denied = Counter(
            "appliance_permission_denied",
            "calls refused by the client-certificate allow-lists, by permission",
            ["permission"],
            registry=r,
        )
        self.curation_requests = Counter(
            "appliance_curation_requests", "curation RPCs by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.curation_seconds = Histogram(
            "appliance_curation_request_seconds",
            "curation RPC duration; a submit's includes its write to disk",
            ["method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.curation_submits = Counter(
            "appliance_curation_submits", "annotations taken, by outcome and kind",
            ["outcome", "kind"], registry=r,
        )  # fmt: skip
        self.curation_deletions = Counter(
            "appliance_curation_deletions",
            "DeleteNote calls, by whether a stored note was removed (true) or none was (false)",
            ["stored"],
            registry=r,
        )

    def watch_store(self, stats: Callable[[], StoreStats]) -> None:
        """Export what the note store holds, read from it at each scrape."""
        self.registry.register(_StoreCollector(stats))

    def watch_gpu(self) -> None:
        """Export CUDA memory when a torch backend runs on a GPU (never imports torch itself:
        a torch-free backend's process has none). Called again once a backend has loaded."""
        torch = sys.modules.get("torch")
        if self._gpu is None and torch is not None and torch.cuda.is_available():
            self._gpu = Gauge(
                "appliance_ner_gpu_memory_bytes", "CUDA memory allocated", registry=self.registry
            )
            self._gpu.set_function(lambda: float(torch.cuda.memory_allocated()))

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it has not been recorded yet)."""
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def watch_queue(self, depth: Callable[[], int], tokens: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
        self.queue_tokens.set_function(lambda: float(tokens()))

    def serve(self, host: str, port: int) -> WSGIServer:
        """Start the exporter on host:port (0: any free port); read the port from the result."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


class _StoreCollector(Collector):
    """The note store's counts at scrape time (counts only, never text)."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("appliance_note_store_up", "1 when the note store could be read")
        try:
            stats = self.stats()
        except Exception as err:  # noqa: BLE001 - a scrape must not fail; the gauge says so
            log.warning("note store unreadable for metrics: %s", err)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        notes = GaugeMetricFamily("appliance_note_store_notes", "notes by kind", labels=["kind"])
        for kind, count in sorted(stats.by_kind.items()):
            notes.add_metric([kind], float(count))
        yield notes
        entities = GaugeMetricFamily(
            "appliance_note_store_entities", "entities of stored notes", labels=["category"]
        )
        for category, count in sorted(stats.entities_by_label.items()):
            entities.add_metric([category], float(count))
        yield entities
        changed = stats.changed_since_round
        for name, help_text, value in (
            ("deleted_notes", "note ids deleted (refused from then on)", stats.deletions),
            ("changed_since_round", "notes new or changed since the last round", changed),
            ("bytes", "the store's database and write-ahead log on disk", stats.bytes_on_disk),
        ):
            yield GaugeMetricFamily(f"appliance_note_store_{name}", help_text, value=float(value))


def _heap_bytes(state: str) -> float:
    return float(heap.stats().get(state, 0))
