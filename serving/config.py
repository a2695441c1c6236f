"""`ServingConfig`: what `appliance serve` runs, from a TOML file and flags, validated once."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from serving.backends import BACKENDS

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServingConfig:
    """One served endpoint. Exactly one of `package` (fixed) or `registry` (watched) is set."""

    package: Path | None = None  # serve this package, never swapped
    registry: Path | None = None  # serve the registry's `current` and follow it
    backend: str = "onnx-int8"  # fastest measured on CPU; see serving.backends.BACKENDS
    state_dir: Path = Path("/var/lib/appliance")  # materialized bases, export caches
    base: str | None = None  # where the base weights live on this box (default: package's)
    threads: int = 0  # intra-op threads of the backend (0: runtime default)
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (tests)
    metrics_port: int | None = None  # Prometheus exporter port (None: off, 0: any free)
    metrics_host: str = "127.0.0.1"
    max_note_chars: int = 125_000
    max_batch_notes: int = 64
    max_queue: int = 256  # queued requests before RESOURCE_EXHAUSTED
    # Model tokens one request may carry: a note over it can never fit (INVALID_ARGUMENT), a
    # batch over it is refused (RESOURCE_EXHAUSTED). 16,384 is ~60,000 characters of English,
    # ~15 s of one core-pair's work on the 135M model; CJK or emoji take 2-3 tokens a character.
    max_request_tokens: int = 16_384
    # Model tokens admitted and not yet answered, server-wide (RESOURCE_EXHAUSTED beyond it).
    max_queue_tokens: int = 65_536
    token_budget: int = 1024  # padded tokens per model batch (1024 measured fastest, 2 cores)
    max_queue_delay_ms: float = 5.0  # how long the batcher waits to fill a batch
    workers: int = 16  # gRPC handler threads
    # Give model-run memory back to the OS whenever the queue runs empty (ONNX Runtime arena
    # shrinkage after each run, glibc malloc_trim): resident memory returns near idle after a
    # large request (benchmarks/results/serving_memory.md).
    release_memory: bool = True
    watch_interval_s: float = 2.0
    drain_grace_s: float = 10.0
    tls_cert: Path | None = None  # server certificate chain (PEM)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed (mTLS)
    production: bool = False  # requires mTLS

    def __post_init__(self) -> None:
        if (self.package is None) == (self.registry is None):
            raise ValueError("set exactly one of package (a fixed model) or registry (watched)")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} unknown; choose one of {sorted(BACKENDS)}")
        positive = ("max_note_chars", "max_batch_notes", "max_queue", "token_budget", "workers")
        for name in (*positive, "max_request_tokens", "max_queue_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_request_tokens > self.max_queue_tokens:
            raise ValueError(
                f"max_request_tokens ({self.max_request_tokens}) must not exceed "
                f"max_queue_tokens ({self.max_queue_tokens}): such a request could never run"
            )
        for name in ("max_queue_delay_ms", "watch_interval_s", "drain_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: {self.metrics_port} is not a TCP port")
        self._check_security()

    def _check_security(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: mTLS needs tls_cert and tls_key too")
        if self.production and self.tls_client_ca is None:
            raise ValueError("production: requires mTLS; set tls_cert, tls_key and tls_client_ca")
        if self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(
                f"host: plaintext is allowed only on loopback, not {self.host!r}; "
                "set tls_cert/tls_key (and tls_client_ca for mTLS) or bind 127.0.0.1"
            )

    @property
    def mtls(self) -> bool:
        return self.tls_client_ca is not None


_PATHS = {"package", "registry", "state_dir", "tls_cert", "tls_key", "tls_client_ca"}


def _coerce(name: str, value: Any) -> Any:
    return Path(value) if name in _PATHS and value is not None else value


def load_config(path: Path | None, overrides: dict[str, Any]) -> ServingConfig:
    """Read the `[serving]` table of a TOML file (or none), then apply non-None `overrides`."""
    known = {f.name for f in fields(ServingConfig)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"{path}: cannot read serving config: {err}") from err
        table = data.get("serving", data)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServingConfig(**{k: _coerce(k, v) for k, v in values.items()})
