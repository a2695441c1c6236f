"""Helpers for the serving tests: a real server on port 0, certificates, registries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, Any] | None, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server cert for localhost and a client cert, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(
            "localhost" if who == "server" else "ehr-client", key, ("test-ca", ca_key), False
        )
        out[f"{who}_cert"] = folder / f"{who}.pem"
        out[f"{who}_key"] = folder / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return out
