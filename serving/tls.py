"""gRPC credentials from PEM files: server TLS / mTLS and the matching client side."""

from __future__ import annotations

from pathlib import Path

import grpc

from serving.config import ServingConfig


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path}: {err.strerror}") from err


def server_credentials(config: ServingConfig) -> grpc.ServerCredentials | None:
    """TLS (or mTLS when tls_client_ca is set) credentials; None for loopback plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = (_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))
    ca = _read(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: trust `ca` (system roots if None); present cert/key for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("client cert and key: set both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "ca") if ca else None,
        private_key=_read(key, "key") if key else None,
        certificate_chain=_read(cert, "cert") if cert else None,
    )
