"""Network rules shared by the appliance's services: which hosts count as this machine only."""

from __future__ import annotations

import ipaddress

# Names that resolve to the loopback interface on every supported box (Debian's /etc/hosts
# maps ip6-localhost to ::1); any other name could resolve anywhere, so it is not loopback.
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True when `host` (a name, an IPv4 or a bracketed or bare IPv6 address) is this machine
    only: plaintext is allowed there and nowhere else."""
    name = host.strip().lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
