"""A consortium's key material: its CA, the SuperLink's TLS certificate, SuperNode keys.

`make_certificates` (behind `appliance federate certs`) writes a consortium CA and the
SuperLink's TLS certificate through `appliance.pki`, and one SuperNode authentication key pair
per hospital (OpenSSH format, as `flwr supernode register` reads it; private files 0600).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from appliance import pki


def make_certificates(
    folder: Path, hospitals: Sequence[str], hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> dict[str, Path]:
    """CA + SuperLink TLS certificate for `hosts`, and an EC P-384 auth key per hospital."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("appliance consortium CA")
    dns, ips = pki.split_hosts(hosts)
    superlink = pki.issue(ca, "superlink", "server", dns, ips)
    paths: dict[str, Path] = {}
    paths["ca"], _ = pki.write_pair(ca, folder, "ca")
    paths["cert"], paths["key"] = pki.write_pair(superlink, folder, "superlink")
    for name in hospitals:
        key = pki.new_key()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        paths[f"{name}.key"], paths[f"{name}.pub"] = folder / f"{name}.key", folder / f"{name}.pub"
        pki.write_private(paths[f"{name}.key"], private)
        paths[f"{name}.pub"].write_bytes(public)
    return paths


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for processes started on one machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
