"""The soak's serving process: `appliance serve` under a small supervisor that restarts it like
systemd's Restart=always / RestartSec=1, and a sampler of its RSS and metrics every second.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.tree_memory import status_kb

ROOT = Path(__file__).resolve().parent.parent
WATCHED = (
    "appliance_ner_model_swaps_total",
    "appliance_ner_model_swap_failures_total",
    "appliance_ner_queue_tokens",
)
MODEL_INFO = "appliance_ner_model_info"  # its `version` label: the version being served
HEAP = "appliance_ner_heap_bytes"  # by `state`: recorded as HEAP:allocated, HEAP:resident
ALLOCATORS = ROOT / "ansible" / "roles" / "hospital_node" / "vars" / "main.yml"
JEMALLOC = Path(f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2")


def serving_env() -> dict[str, str]:
    """The serving unit's environment as the Ansible role renders it on this machine: jemalloc
    preloaded where it is installed (the role's default), else glibc with two arenas."""
    import yaml

    allocators = yaml.safe_load(ALLOCATORS.read_text())["_hospital_node_allocator_env"]
    if JEMALLOC.is_file():
        return {"HF_HUB_OFFLINE": "1", **allocators["jemalloc"], "LD_PRELOAD": str(JEMALLOC)}
    return {"HF_HUB_OFFLINE": "1", **allocators["glibc"]}


@dataclass
class Life:
    """One run of the serving process, times on the monotonic clock."""

    pid: int
    started: float
    ended: float | None = None
    returncode: int | None = None


class Supervisor:
    """Runs `argv`; whenever it exits it is started again after `restart_s` (Restart=always)."""

    def __init__(self, argv: list[str], log: Path, restart_s: float = 1.0) -> None:
        self.argv = argv
        self.log = log
        self.restart_s = restart_s
        self.lives: list[Life] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def _loop(self) -> None:
        env = {**os.environ, **serving_env()}
        with self.log.open("ab") as log:
            while not self._stopping.is_set():
                proc = subprocess.Popen(self.argv, stdout=log, stderr=log, cwd=ROOT, env=env)
                life = Life(proc.pid, time.monotonic())
                self._proc = proc
                self.lives.append(life)
                self._started.set()
                life.returncode = proc.wait()
                life.ended = time.monotonic()
                self._stopping.wait(self.restart_s)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def kill(self) -> tuple[int, float]:
        """SIGKILL the running process (the supervisor restarts it); (its pid, when)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the serving process is not running")
        proc.send_signal(signal.SIGKILL)
        return proc.pid, time.monotonic()

    def stop(self, grace_s: float = 60.0) -> None:
        """No more restarts; SIGTERM (drain) the running process and wait for it."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._thread.join(timeout=grace_s)


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic
    pid: int
    rss_mb: float
    metrics: dict[str, float]  # WATCHED names that the exporter answered
    version: str  # the served model version ("" before one is loaded or when unanswered)
    anon_mb: float | None = None  # RssAnon: the part of rss_mb not backed by a file


def rss_mb(pid: int) -> float | None:
    """VmRSS of `pid` in MB (None when it has gone)."""
    sizes = rss_anon_mb(pid)
    return None if sizes is None else sizes[0]


def rss_anon_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, RssAnon) of `pid` in MB (None when it has gone)."""
    kb = status_kb(pid, ("VmRSS", "RssAnon"))
    return None if len(kb) < 2 else (kb["VmRSS"] / 1024, kb["RssAnon"] / 1024)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds `pid` has used, all its threads (0 when it has gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> tuple[dict[str, float], str]:
    """The WATCHED samples of a Prometheus exporter and the served version ({}, "" when it does
    not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as page:
            text = page.read().decode()
    except OSError:
        return {}, ""
    values, version = {}, ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WATCHED and not sample.labels:
                values[sample.name] = float(sample.value)
            elif sample.name == HEAP:
                values[f"{HEAP}:{sample.labels.get('state')}"] = float(sample.value)
            elif sample.name == MODEL_INFO:
                version = sample.labels.get("version", "")
    return values, version


class Sampler:
    """Every `interval_s`: the supervised process's RSS (following a restarted pid) and metrics."""

    def __init__(self, supervisor: Supervisor, metrics_url: str, interval_s: float = 1.0) -> None:
        self.supervisor = supervisor
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            pid = self.supervisor.pid
            sizes = None if pid is None else rss_anon_mb(pid)
            if pid is not None and sizes is not None:
                values, version = scrape(self.metrics_url)
                self.samples.append(Sample(started, pid, sizes[0], values, version, sizes[1]))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
