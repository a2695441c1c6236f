"""`appliance certs ca|issue|show`: a CA, server and client certificates, and their expiry.

Files are PEM: the CA as `ca.pem`/`ca.key`, a certificate as `NAME.pem`/`NAME.key` (keys 0600);
an existing file is never overwritten. Results are JSON like every `appliance` command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from appliance import pki

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def add_parser(sub: argparse._SubParsersAction) -> None:
    certs = sub.add_parser("certs", help="a CA, server/client certificates for TLS and mTLS")
    actions = certs.add_subparsers(dest="certs_command", required=True)
    ca = actions.add_parser("ca", help="a new CA: ca.pem and ca.key (0600) in --out")
    ca.add_argument("--out", required=True, type=Path, help="folder for ca.pem and ca.key")
    ca.add_argument("--name", default="appliance CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity (default 3650)")
    ca.set_defaults(handler=make_ca)
    issue = actions.add_parser("issue", help="a certificate signed by a CA: NAME.pem, NAME.key")
    issue.add_argument("--ca", required=True, type=Path, help="folder holding ca.pem and ca.key")
    issue.add_argument("--name", required=True, help="common name; also names the files")
    issue.add_argument("--out", required=True, type=Path, help="folder for NAME.pem, NAME.key")
    usage = issue.add_mutually_exclusive_group()
    usage.add_argument("--server", action="store_true", help="TLS server only (needs a SAN)")
    usage.add_argument("--client", action="store_true", help="TLS client only (mTLS)")
    issue.add_argument(
        "--dns", nargs="+", action="extend", default=[], help="DNS names the server answers to"
    )
    issue.add_argument(
        "--ip", nargs="+", action="extend", default=[], help="IP addresses the server answers on"
    )
    issue.add_argument("--days", type=int, help="validity (default 825, at most the CA's)")
    issue.set_defaults(handler=issue_cert)
    show = actions.add_parser("show", help="subject, issuer, SANs, expiry and days left")
    show.add_argument("file", type=Path, help="a PEM certificate")
    show.set_defaults(handler=show_cert)


def make_ca(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("ca.pem", "ca.key"):
        if (args.out / name).exists():
            raise ValueError(f"{args.out / name}: exists; refusing to overwrite a CA")
    issued = pki.make_ca(args.name, args.days)
    cert, key = pki.write_pair(issued, args.out, "ca")
    return {"cert": str(cert), "key": str(key), **pki.describe(issued.cert)}


def issue_cert(args: argparse.Namespace) -> dict[str, Any]:
    if not _FILE_NAME.fullmatch(args.name):
        raise ValueError(
            f"--name {args.name!r}: use letters, digits, '.', '-' and '_' (it names the files)"
        )
    usage = "server" if args.server else "client" if args.client else "both"
    ca = pki.load_ca(args.ca)
    issued = pki.issue(ca, args.name, usage, args.dns, args.ip, args.days)
    cert, key = pki.write_pair(issued, args.out, args.name)
    return {"cert": str(cert), "key": str(key), **pki.describe(issued.cert)}


def show_cert(args: argparse.Namespace) -> dict[str, Any]:
    return {"file": str(args.file), **pki.describe(pki.read_cert(args.file))}
