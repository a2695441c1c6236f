"""One loopback rule: the serving config and the federation daemon config both use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.net import is_loopback
from federation.daemon_config import DaemonConfig
from serving.config import ServingConfig

LOOPBACK = ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST", "ip6-localhost"]
NOT_LOOPBACK = ["10.0.0.5", "0.0.0.0", "::", "[::]", "example.org", "localhost.example.org", ""]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts(host: str):
    assert is_loopback(host)


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_other_hosts_are_not_loopback(host: str):
    assert not is_loopback(host)


def _serving_plaintext_allowed(host: str) -> bool:
    try:
        ServingConfig(package=Path("pkg"), host=host)
    except ValueError as err:
        assert "plaintext is allowed only on loopback" in str(err)
        return False
    return True


def _daemon_plaintext_allowed(host: str, tmp_path: Path) -> bool:
    try:
        DaemonConfig(
            hospital="hospital-a",
            superlink=f"{host}:9092",
            notes=tmp_path / "notes.jsonl",
            heldout=tmp_path / "heldout.jsonl",
            state_dir=tmp_path / "state",
            registry=tmp_path / "registry",
            insecure=True,
        )
    except ValueError as err:
        assert "only allowed to a loopback" in str(err)
        return False
    return True


@pytest.mark.parametrize("host", ["ip6-localhost", "localhost", "[::1]", "127.0.0.1", "10.0.0.5"])
def test_serving_and_the_daemon_agree_on_plaintext(host: str, tmp_path: Path):
    # Prepare / Execute
    serving = _serving_plaintext_allowed(host)
    daemon = _daemon_plaintext_allowed(host, tmp_path)

    # Assert
    assert serving == daemon == is_loopback(host)
