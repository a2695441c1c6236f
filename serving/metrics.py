"""Prometheus metrics of one server, on their own registry and exporter port."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
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

from serving import heap

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


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
        self.watch_gpu()

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


def _heap_bytes(state: str) -> float:
    return float(heap.stats().get(state, 0))
