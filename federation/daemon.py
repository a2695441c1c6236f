"""The nightly daemon: a hospital's SuperNode, supervised inside its training window only.

Inside the window it keeps `flower-supernode` running (restarting a crashed one with backoff);
when the window closes, or the daemon is asked to stop, it sends SIGTERM and waits. Outside the
window nothing trains. Rounds, promotions and ε come from the round journal the ClientApp
writes; the daemon turns them into Prometheus metrics.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

from appliance.errors import PackageError
from appliance.package_meta import read_package_meta
from appliance.registry import ModelRegistry
from federation.daemon_config import DaemonConfig
from federation.exporter import DaemonMetrics
from federation.journal import JournalReader, read_journal

log = logging.getLogger(__name__)
Clock = Callable[[], dt.datetime]
STOP_GRACE_S = 30.0


def past_privacy_spend(cfg: DaemonConfig) -> str | None:
    """Where the node's state shows rounds that spent privacy budget (None: nowhere). Rounds
    without DP spend nothing and keep no ledger, so they do not count."""
    for entry in read_journal(cfg.journal):
        if entry.event in ("round_completed", "round_declined") and "eps_spent" in entry.fields:
            return f"the journal {cfg.journal} (round {entry.fields.get('server_round')})"
    registry = ModelRegistry(cfg.registry)
    for version in registry.versions():
        try:
            training = read_package_meta(registry.path(version)).get("training")
        except PackageError:
            continue  # a damaged version says nothing either way
        if isinstance(training, dict) and training.get("dp"):
            return f"the registry {cfg.registry} (version {version}, trained with DP)"
    return None


def check_privacy_ledger(cfg: DaemonConfig) -> None:
    """Refuse to run a node whose past rounds spent privacy budget but whose ledger is gone (a
    restore that missed it): its next round would count ε from 0 again."""
    if cfg.ledger.exists():
        return
    evidence = past_privacy_spend(cfg)
    if evidence is not None:
        raise ValueError(
            f"{cfg.ledger}: the privacy ledger is missing, but {evidence} shows past rounds "
            "that spent privacy budget; starting now would count epsilon from 0 again: "
            f"restore privacy-ledger.json from backup to {cfg.ledger}, then start the daemon"
        )


class NightlyDaemon:
    """Supervises the SuperNode child; `tick()` does one step, `run()` loops until stopped.

    It refuses to start (`ValueError`) when the node's privacy ledger is missing but its journal
    or registry shows rounds that spent privacy budget (`check_privacy_ledger`).
    """

    def __init__(
        self, cfg: DaemonConfig, clock: Clock | None = None, metrics: DaemonMetrics | None = None
    ) -> None:
        check_privacy_ledger(cfg)
        self.cfg = cfg
        self.clock = clock or (lambda: dt.datetime.now().astimezone())
        self.metrics = metrics or DaemonMetrics(cfg.hospital)
        self.reader = JournalReader(cfg.journal)
        self.child: subprocess.Popen[bytes] | None = None
        self.backoff = cfg.restart_backoff_s
        self.next_start = 0.0
        self.stopping = threading.Event()
        self._log: IO[bytes] | None = None

    def tick(self) -> None:
        """Start, keep or stop the SuperNode for the current time; refresh metrics."""
        inside = self.cfg.time_window.contains(self.clock())
        self.metrics.window_open.labels(self.cfg.hospital).set(1 if inside else 0)
        if inside and not self.stopping.is_set():
            self._keep_running()
        elif self.child is not None:
            log.info("training window %s closed: stopping the SuperNode", self.cfg.window)
            self.stop_child()
        self.metrics.supernode_up.labels(self.cfg.hospital).set(1 if self.running else 0)
        self._follow_journal()

    def _follow_journal(self) -> None:
        """Metrics from the journal's new entries and the disk; a promotion is followed by a
        prune of the registry."""
        promoted = False
        for entry in self.reader.new_entries():
            self.metrics.observe(entry)
            promoted |= entry.event == "promotion" and entry.fields.get("outcome") == "promoted"
        registry = ModelRegistry(self.cfg.registry)
        if promoted:
            self.prune(registry)
        self.metrics.observe_disk(registry, self.cfg.state_dir)

    def prune(self, registry: ModelRegistry) -> None:
        """Apply the retention (`ModelRegistry.prune`); a failure is logged, the daemon goes on."""
        try:
            done = registry.prune(self.cfg.keep_versions, exports=self.cfg.serving_exports)
        except (ValueError, OSError) as err:  # RegistryError is a ValueError
            log.warning("registry %s: prune failed: %s", registry.root, err)
            return
        log.info(
            "registry %s: removed %d version(s), %d export(s); %d held by a reader; kept %s",
            registry.root,
            len(done.removed),
            len(done.exports),
            len(done.held),
            ", ".join(done.kept),
        )

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def _keep_running(self) -> None:
        if self.child is not None and self.child.poll() is not None:
            code = self.child.returncode
            log.warning("SuperNode exited with code %s; restarting in %.0f s", code, self.backoff)
            self.metrics.supernode_restarts.labels(self.cfg.hospital).inc()
            self.child = None
            self.next_start = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, self.cfg.max_backoff_s)
        if self.child is None and time.monotonic() >= self.next_start:
            self._start_child()

    def _start_child(self) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = (self.cfg.state_dir / "supernode.log").open("ab")
        command = self.cfg.command()
        log.info("starting the SuperNode for %s (%s)", self.cfg.hospital, command[0])
        self.child = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.monotonic()

    def stop_child(self) -> None:
        """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL."""
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("SuperNode ignored SIGTERM for %.0f s: killing it", STOP_GRACE_S)
            child.kill()
            child.wait()
        self.backoff = self.cfg.restart_backoff_s

    def run(self) -> None:
        """Loop until `stopping` is set (SIGTERM/SIGINT); then stop the child cleanly."""
        log.info("federation daemon for %s, window %s", self.cfg.hospital, self.cfg.window)
        while not self.stopping.is_set():
            self.tick()
            if self.running and self.child is not None:
                self.backoff = self._settled_backoff()
            self.stopping.wait(self.cfg.poll_s)
        self.stop_child()
        self.metrics.supernode_up.labels(self.cfg.hospital).set(0)
        if self._log is not None:
            self._log.close()

    def _settled_backoff(self) -> float:
        # A child that stayed up for a minute is healthy again: the next crash restarts quickly.
        if time.monotonic() - getattr(self, "started_at", 0.0) > 60.0:
            return self.cfg.restart_backoff_s
        return self.backoff

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
