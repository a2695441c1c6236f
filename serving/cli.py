"""`appliance serve` (registered into the core CLI) and the annotator behind `annotate --remote`.

`register` is this package's `appliance.cli` entry point; `annotate_remote` is its
`appliance.remote_annotator` entry point (see appliance/remote.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import grpc

from appliance.exits import CommandError

log = logging.getLogger(__name__)
_OVERRIDES = (
    "package", "registry", "backend", "state_dir", "host", "port", "metrics_port",
    "tls_cert", "tls_key", "tls_client_ca",
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve`."""
    serve = sub.add_parser("serve", help="serve NER over gRPC (blocks; SIGTERM drains)")
    serve.add_argument("--config", type=Path, help="TOML file with a [serving] table")
    serve.add_argument("--package", type=Path, help="serve this model package (fixed)")
    serve.add_argument("--registry", type=Path, help="serve and follow this registry's current")
    serve.add_argument("--backend", help="torch-fp32, onnx-int4, torch-nf4, ...")
    serve.add_argument("--state-dir", type=Path, help="bases and export caches")
    serve.add_argument("--host", help="bind address (plaintext only on loopback)")
    serve.add_argument("--port", type=int, help="gRPC port (0: any free port)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus exporter port")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--tls-client-ca", type=Path, help="require client certs signed by it")
    serve.add_argument("--production", action="store_true", default=None, help="require mTLS")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> None:
    from serving.backends import TORCH_FREE, keep_torch_out
    from serving.config import load_config

    overrides: dict[str, Any] = {k: getattr(args, k) for k in _OVERRIDES}
    overrides["production"] = args.production
    config = load_config(args.config, overrides)
    if config.backend in TORCH_FREE:
        keep_torch_out()
    from serving.server import create_server

    server, port = create_server(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"serving on {config.host}:{port}", flush=True)
    if server.metrics_port is not None:
        print(f"metrics on {config.metrics_host}:{server.metrics_port}", flush=True)
    stop.wait()
    log.info("draining")
    server.stop()
    if server.engine.model is None:
        raise CommandError("stopped before any model could be served", exit_code=3)


def annotate_remote(
    target: str, text: str, *, ca: Path | None, cert: Path | None, key: Path | None
) -> list[dict[str, Any]]:
    """`appliance annotate --remote`: the note's spans from the endpoint `target`."""
    from serving.client import NerClient

    with NerClient(target, ca=ca, cert=cert, key=key) as client:
        try:
            response = client.analyze(text, include_text=True)
        except grpc.RpcError as err:
            raise CommandError(f"{target}: {err.code().name}: {err.details()}") from None
    return [
        {
            "start": e.begin,
            "end": e.end,
            "label": e.category,
            "score": round(e.score, 4),
            "text": e.text,
        }
        for e in response.entities
    ]
