"""`ServingConfig`: what `appliance serve` runs, from a TOML file and flags, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.net import is_loopback
from appliance.tomlconfig import check_keys, read_toml, table
from serving.backends import BACKENDS


@dataclass(frozen=True)
class ServingConfig:
    """One served endpoint. Exactly one of `package` (fixed) or `registry` (watched) is set."""

    package: Path | None = field(
        default=None,
        metadata={"help": "serve this model package, never swapped (set this or registry)"},
    )
    registry: Path | None = field(
        default=None,
        metadata={
            "help": "serve the registry's `current` version and follow it (set this or package)"
        },
    )
    backend: str = field(
        default="onnx-int8",
        metadata={
            "help": "runtime: onnx-int8 (fastest measured on CPU), onnx-int4, torch-nf4 or "
            "torch-fp32"
        },
    )
    state_dir: Path = field(
        default=Path("/var/lib/appliance"),
        metadata={"help": "where materialized bases and ONNX export caches live"},
    )
    base: str | None = field(
        default=None,
        metadata={
            "help": "where the base weights live on this box (unset: the path the package records)"
        },
    )
    threads: int = field(
        default=0, metadata={"help": "intra-op threads of the backend (0: the runtime's default)"}
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "gRPC listen address; plaintext is refused unless it is loopback"},
    )
    port: int = field(default=50051, metadata={"help": "gRPC port (0: any free port)"})
    metrics_port: int | None = field(
        default=None, metadata={"help": "Prometheus exporter port (unset: off, 0: any free port)"}
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata={"help": "Prometheus exporter listen address"}
    )
    max_note_chars: int = field(
        default=125_000, metadata={"help": "characters per note; longer notes get INVALID_ARGUMENT"}
    )
    max_batch_notes: int = field(
        default=64, metadata={"help": "notes per AnalyzeBatch; more get INVALID_ARGUMENT"}
    )
    max_queue: int = field(
        default=256,
        metadata={"help": "requests waiting for the model; beyond it RESOURCE_EXHAUSTED"},
    )
    max_request_tokens: int = field(
        default=16_384,
        metadata={
            "help": "model tokens one request may carry: a note over it can never fit "
            "(INVALID_ARGUMENT), a batch over it is refused (RESOURCE_EXHAUSTED); 16,384 "
            "is about 60,000 characters of English, about 15 s of one core-pair's work on "
            "the 135M model; CJK or emoji take 2-3 tokens a character"
        },
    )
    max_queue_tokens: int = field(
        default=65_536,
        metadata={
            "help": "model tokens admitted and not yet answered, server-wide; beyond it "
            "RESOURCE_EXHAUSTED"
        },
    )
    token_budget: int = field(
        default=1024,
        metadata={"help": "padded tokens per model batch (1024 measured fastest on 2 cores)"},
    )
    max_queue_delay_ms: float = field(
        default=5.0, metadata={"help": "how long the batcher waits to fill a batch"}
    )
    workers: int = field(default=16, metadata={"help": "gRPC handler threads"})
    release_memory: bool = field(
        default=True,
        metadata={
            "help": "give memory back to the OS whenever no work is admitted (ONNX Runtime "
            "runs without its own arena; the heap's free pages are purged: jemalloc's purge or "
            "glibc's malloc_trim), so resident memory returns near idle after a large "
            "request (measured by benchmarks/serving_memory.py)"
        },
    )
    watch_interval_s: float = field(
        default=2.0, metadata={"help": "seconds between checks of the registry's `current`"}
    )
    drain_grace_s: float = field(
        default=10.0, metadata={"help": "on SIGTERM, seconds calls in flight get to finish"}
    )
    tls_cert: Path | None = field(
        default=None, metadata={"help": "server certificate chain (PEM); with tls_key turns on TLS"}
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "the server certificate's private key (PEM)"}
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata={"help": "set: clients must present a certificate this CA signed (mTLS)"},
    )
    production: bool = field(
        default=False,
        metadata={"help": "refuse to start without mTLS (tls_cert, tls_key and tls_client_ca)"},
    )
    note_store: Path | None = field(
        default=None,
        metadata={
            "help": "the clinicians' annotated-notes store (SQLite) the curation service writes "
            "and the nightly round trains on; unset: no curation service"
        },
    )
    allow_analyze: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "with mTLS: client-certificate subjects (common name or whole subject) "
            "that may call the NER service; empty: every client the CA signed"
        },
    )
    allow_curate: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "with mTLS: subjects that may submit annotations and read the note "
            "store's stats; empty: none"
        },
    )
    allow_delete: tuple[str, ...] = field(
        default=(),
        metadata={"help": "with mTLS: subjects that may delete notes from the store; empty: none"},
    )

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
        self._check_allow_lists()

    def _check_allow_lists(self) -> None:
        for name in ("allow_analyze", "allow_curate", "allow_delete"):
            subjects = getattr(self, name)
            if subjects and not self.mtls:
                raise ValueError(f"{name}: allow-lists need mTLS (tls_client_ca) to know callers")
            for subject in subjects:
                if not isinstance(subject, str) or not subject.strip():
                    raise ValueError(f"{name}: {subject!r} is not a certificate subject")
        if self.note_store is not None and not self.mtls and not is_loopback(self.host):
            raise ValueError(
                f"note_store: the curation service writes training data, so off loopback "
                f"({self.host!r}) it needs mTLS (tls_client_ca) and allow_curate"
            )

    @property
    def mtls(self) -> bool:
        return self.tls_client_ca is not None


_PATHS = {"package", "registry", "state_dir", "tls_cert", "tls_key", "tls_client_ca", "note_store"}
_LISTS = {"allow_analyze", "allow_curate", "allow_delete"}


def _coerce(name: str, value: Any) -> Any:
    if name in _LISTS and isinstance(value, list):
        return tuple(value)
    if name in _LISTS and not isinstance(value, tuple):
        raise ValueError(f"{name}: a list of certificate subjects, not {value!r}")
    return Path(value) if name in _PATHS and value is not None else value


def load_config(path: Path | None, overrides: dict[str, Any]) -> ServingConfig:
    """Read the `[serving]` table of a TOML file (or none), then apply non-None `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path, "serving config")
        where = f"{path} [serving]" if "serving" in data else str(path)
        section = table(data, "serving", where) if "serving" in data else data
        check_keys(section, ServingConfig, where)
        values.update(section)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServingConfig(**{k: _coerce(k, v) for k, v in values.items()})
