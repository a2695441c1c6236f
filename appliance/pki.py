"""Certificates for TLS and mTLS: a CA, server and client certificates with SANs, PEM files.

Every certificate the product and its tests use is built here: `appliance certs`, the
consortium's `appliance federate certs` and the test servers. Keys are EC P-384; private files
are written 0600 and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825
USAGES = ("server", "client", "both")
_EKU = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(common_name: str) -> x509.Name:
    if not common_name.strip():
        raise ValueError("a certificate name must not be empty")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _expiry(days: int) -> dt.datetime:
    if days < 1:
        raise ValueError(f"--days {days}: must be >= 1")
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))  # clock skew
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signatures only (EC keys agree on TLS keys by signing); a CA also signs certificates."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def make_ca(name: str = "appliance CA", days: int = CA_DAYS) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = new_key()
    subject = _name(name)
    cert = (
        _builder(subject, subject, key, _expiry(days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def alt_names(dns: Iterable[str] = (), ips: Iterable[str] = ()) -> list[x509.GeneralName]:
    """SubjectAltName entries; an address that does not parse is refused by name."""
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    for address in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise ValueError(f"--ip {address}: not an IPv4 or IPv6 address") from None
    return names


def split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a mixed list of hosts."""
    dns, ips = [], []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            dns.append(host)
    return dns, ips


def _leaf_expiry(ca: Issued, name: str, days: int | None) -> dt.datetime:
    """`days` from now (default: LEAF_DAYS or what the CA has left), never past the CA's end."""
    ends = ca.cert.not_valid_after_utc
    left = (ends - dt.datetime.now(dt.UTC)).days
    if left < 1:
        raise ValueError(f"the CA expires on {ends:%Y-%m-%d} (less than a day left): make a new CA")
    not_after = _expiry(min(LEAF_DAYS, left) if days is None else days)
    if not_after > ends:
        raise ValueError(
            f"--days {days}: {name} would outlive its CA (valid until {ends:%Y-%m-%d}); "
            "issue for fewer days or renew the CA"
        )
    return not_after


def issue(
    ca: Issued,
    name: str,
    usage: str = "both",
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int | None = None,
) -> Issued:
    """A leaf certificate for `usage` (server, client or both) signed by `ca`, valid `days`
    (default: 825, or as long as the CA has left if that is shorter).

    A server certificate needs a DNS name or an address: TLS clients check the host they dialled
    against the SANs, not against the common name.
    """
    if usage not in USAGES:
        raise ValueError(f"usage {usage!r}: choose one of {', '.join(USAGES)}")
    sans = alt_names(dns, ips)
    if usage == "server" and not sans:
        raise ValueError(f"{name}: a server certificate needs at least one --dns or --ip")
    key = new_key()
    builder = (
        _builder(_name(name), ca.cert.subject, key, _leaf_expiry(ca, name, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKU[usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; an existing file is never replaced (it may hold a live key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ValueError(f"{path}: exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_private(path: Path, data: bytes) -> None:
    """A new file only its owner can read (0600)."""
    _write_new(path, data, 0o600)


def write_pair(issued: Issued, folder: Path, stem: str) -> tuple[Path, Path]:
    """`stem`.pem (certificate, 0644) and `stem`.key (PKCS#8, 0600); neither may exist yet."""
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise ValueError(f"{path}: exists; refusing to overwrite it")
    write_private(key_path, key_pem(issued.key))
    _write_new(cert_path, issued.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror}") from None


def read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a PEM certificate") from None


def load_ca(folder: Path) -> Issued:
    """The CA in `folder` (ca.pem, ca.key) as `appliance certs ca` wrote it."""
    cert = read_cert(folder / "ca.pem")
    try:
        key = serialization.load_pem_private_key(_read(folder / "ca.key"), password=None)
    except (TypeError, ValueError) as err:
        if str(err).startswith(str(folder)):
            raise
        raise ValueError(f"{folder / 'ca.key'}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / 'ca.key'}: not an EC key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{folder}: ca.key does not belong to ca.pem")
    if not _is_ca(cert):
        raise ValueError(f"{folder / 'ca.pem'}: not a CA certificate")
    return Issued(cert, key)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def describe(cert: x509.Certificate, now: dt.datetime | None = None) -> dict[str, Any]:
    """Subject, issuer, SANs, usage and validity of `cert` (what `appliance certs show` prints)."""
    now = now or dt.datetime.now(dt.UTC)
    sans = _extension(cert, x509.SubjectAlternativeName)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    usage = [u for u, oids in _EKU.items() if u != "both" and eku and oids[0] in eku]
    left = cert.not_valid_after_utc - now
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "ca": _is_ca(cert),
        "usage": usage,
        "dns": sans.get_values_for_type(x509.DNSName) if sans else [],
        "ip": [str(a) for a in sans.get_values_for_type(x509.IPAddress)] if sans else [],
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": left.days,
        "expired": left.total_seconds() <= 0,
    }
