"""Helpers for the serving tests: a real server on port 0, certificates, registries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance import pki
from appliance.registry import ModelRegistry
from serving.config import ServingConfig
from serving.server import NerServer, create_server


def config_for(package: Path | None = None, **fields: Any) -> ServingConfig:
    base = ServingConfig(
        package=package,
        registry=fields.pop("registry", None),
        port=0,
        backend=fields.pop("backend", "torch-fp32"),  # the reference; backends have their tests
    )
    return replace(base, state_dir=fields.pop("state_dir", package or Path(".")), **fields)


@contextmanager
def running(config: ServingConfig, ready: bool = True) -> Iterator[tuple[NerServer, int]]:
    """Start a server; yield (server, port); drain it on exit."""
    server, port = create_server(config)
    server.start()
    try:
        if ready:
            assert server.wait_ready(60), "model did not load"
            _wait_serving(server)
        yield server, port
    finally:
        server.stop(grace=5)


def _wait_serving(server: NerServer) -> None:
    import time

    from grpc_health.v1 import health_pb2

    until = time.monotonic() + 10
    while time.monotonic() < until:
        status = server.health._server_status.get("")  # noqa: SLF001 - test helper
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.02)


def publish(registry: ModelRegistry, package: Path, label: str) -> str:
    """Copy `package` into the registry as a new version and promote it."""
    version = registry.publish(package, label)
    registry.promote(version.version, "test")
    return version.version


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server cert for localhost and a client cert, as PEM files in `folder`."""
    ca = pki.make_ca("test-ca", days=2)
    out = {"ca": pki.write_pair(ca, folder, "ca")[0]}
    server = pki.issue(ca, "localhost", "server", dns=["localhost"], days=1)
    out["server_cert"], out["server_key"] = pki.write_pair(server, folder, "server")
    client = pki.issue(ca, "ehr-client", "client", days=1)
    out["client_cert"], out["client_key"] = pki.write_pair(client, folder, "client")
    return out
