"""Prometheus metrics of a hospital's federation daemon, fed from its round journal."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from appliance.registry import ModelRegistry
from federation.journal import JournalEntry, JournalReader

ROUND_EVENTS = {
    "round_started": "started",
    "round_completed": "completed",
    "round_failed": "failed",
    "round_declined": "declined",
}


class DaemonMetrics:
    """The daemon's metrics in their own registry (process CPU/memory included)."""

    def __init__(self, hospital: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        reg, node = self.registry, ["hospital"]
        self.hospital = hospital
        self.rounds = Counter(
            "appliance_federation_rounds",
            "Rounds by outcome",
            ["hospital", "outcome"],
            registry=reg,
        )
        self.last_round = Gauge(
            "appliance_federation_last_round_timestamp_seconds",
            "End of the last round (unix)",
            node,
            registry=reg,
        )
        self.last_duration = Gauge(
            "appliance_federation_last_round_duration_seconds",
            "Local time of the last round",
            node,
            registry=reg,
        )
        self.bytes = Counter(
            "appliance_federation_bytes",
            "Serialized update bytes",
            ["hospital", "direction"],
            registry=reg,
        )
        self.examples = Gauge(
            "appliance_federation_local_examples",
            "Local training examples in the last round",
            node,
            registry=reg,
        )
        self.loss = Gauge("appliance_federation_local_loss", "Last local loss", node, registry=reg)
        self.f1 = Gauge(
            "appliance_federation_local_f1",
            "Last strict F1 on held-out local notes",
            node,
            registry=reg,
        )
        self.eps_spent = Gauge(
            "appliance_federation_epsilon_spent",
            "Privacy budget spent (epsilon)",
            node,
            registry=reg,
        )
        self.eps_remaining = Gauge(
            "appliance_federation_epsilon_remaining",
            "Privacy budget remaining (epsilon)",
            node,
            registry=reg,
        )
        self.promotions = Counter(
            "appliance_federation_promotions",
            "Promotion decisions by outcome",
            ["hospital", "outcome"],
            registry=reg,
        )
        self.supernode_up = Gauge(
            "appliance_federation_supernode_running",
            "1 while the SuperNode child runs",
            node,
            registry=reg,
        )
        self.window_open = Gauge(
            "appliance_federation_window_open",
            "1 inside the training window",
            node,
            registry=reg,
        )
        self.supernode_restarts = Counter(
            "appliance_federation_supernode_restarts",
            "SuperNode child restarts after a crash",
            node,
            registry=reg,
        )
        self.registry_bytes = Gauge(
            "appliance_registry_bytes",
            "Bytes of the model registry's versions on disk",
            node,
            registry=reg,
        )
        self.registry_versions = Gauge(
            "appliance_registry_versions",
            "Complete versions in the model registry",
            node,
            registry=reg,
        )
        self.disk_used = Gauge(
            "appliance_state_disk_used_ratio",
            "Used fraction of the filesystem holding the state dir, as df counts it",
            node,
            registry=reg,
        )

    def observe(self, entry: JournalEntry) -> None:
        """Update the metrics from one journal entry."""
        f, h = entry.fields, self.hospital
        if entry.event in ROUND_EVENTS:
            self.rounds.labels(h, ROUND_EVENTS[entry.event]).inc()
        if entry.event in ("round_completed", "round_failed", "round_declined"):
            self.last_round.labels(h).set(_timestamp(entry.time))
            _set(self.last_duration, h, f.get("duration_s"))
        if entry.event == "round_completed":
            self._observe_completed(f)
        for key in ("eps_spent", "eps_remaining"):
            _set(getattr(self, key), h, f.get(key))
        if entry.event == "promotion":
            self.promotions.labels(h, str(f.get("outcome", "unknown"))).inc()
            _set(self.f1, h, f.get("candidate_f1"))

    def _observe_completed(self, f: dict[str, Any]) -> None:
        h = self.hospital
        for key, direction in (("bytes_sent", "sent"), ("bytes_received", "received")):
            if isinstance(f.get(key), int | float):
                self.bytes.labels(h, direction).inc(float(f[key]))
        _set(self.examples, h, f.get("num_examples"))
        _set(self.loss, h, f.get("loss"))
        _set(self.f1, h, f.get("f1"))

    def observe_disk(self, registry: ModelRegistry, state_dir: Path) -> None:
        """The registry's size and version count, and how full the state dir's disk is."""
        h = self.hospital
        self.registry_bytes.labels(h).set(registry.size_bytes())
        self.registry_versions.labels(h).set(len(registry.versions()))
        try:
            usage = shutil.disk_usage(state_dir)
        except OSError:
            return  # not created yet
        # df's Use%: blocks reserved for root count neither as used nor as available.
        self.disk_used.labels(h).set(usage.used / max(usage.used + usage.free, 1))

    def follow(self, reader: JournalReader) -> int:
        """Apply the journal's new entries; returns how many were read."""
        count = 0
        for entry in reader.new_entries():
            self.observe(entry)
            count += 1
        return count

    def serve(self, address: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()


def _set(gauge: Any, hospital: str, value: Any) -> None:
    """Set the hospital's sample only for a number: a sample is made when first labelled, and a
    0 the journal never said (epsilon with DP off, an F1 before any scoring) would mislead."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        gauge.labels(hospital).set(float(value))


def _timestamp(text: str) -> float:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return dt.datetime.now(dt.UTC).timestamp()
