"""Serving fixtures shared by the test modules that define a module-scoped `server`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.client import NerClient
from serving.server import NerServer


@pytest.fixture()
def client(server: NerServer) -> Iterator[NerClient]:
    """A client of the module's `server` (whose `port` attribute the module set)."""
    with NerClient(f"127.0.0.1:{server.port}") as c:  # type: ignore[attr-defined]
        yield c
