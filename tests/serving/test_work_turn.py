"""Serving exports a promoted version only in the box's work turn, and never fails it for that:
while a node's round holds the turn the previous version serves, and the export follows."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from appliance.registry import ModelRegistry
from serving.client import NerClient
from tests.appliance.test_work_turn import holder
from tests.serving.servers import config_for, publish, running
from tests.serving.test_faults import FAILED, NOTE, POLL_S, _copy, _wait_for

WAITS = "waits for the node's round to end to be exported"


def _exports(state: Path) -> list[str]:
    folder = state / "exports"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_promoted_version_is_exported_after_the_round_holding_the_turn(
    tiny_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the first version exported and serving
    caplog.set_level(logging.INFO, logger="serving.watcher")
    registry = ModelRegistry(tmp_path / "registry")
    first = publish(registry, tiny_package, "first")
    state = tmp_path / "state"
    cfg = config_for(
        registry=registry.root, state_dir=state, backend="onnx-int4", watch_interval_s=POLL_S
    )
    with running(cfg) as (server, port), NerClient(f"127.0.0.1:{port}") as client:
        exported = _exports(state)
        # Execute: a node's round holds the turn while a new version is promoted
        with holder(registry.root):
            second = publish(registry, _copy(tiny_package, tmp_path / "p2", created="2"), "second")
            time.sleep(40 * POLL_S)  # many checks of the registry
            # Assert: no export, no failure, the previous version answers
            assert _exports(state) == exported
            assert server.engine.metrics.value(FAILED) == 0
            assert client.analyze(NOTE).model_version == first
        _wait_for(lambda: client.analyze(NOTE).model_version == second)
        assert len(_exports(state)) == len(exported) + 1
        assert server.engine.metrics.value(FAILED) == 0
    waits = [r.getMessage() for r in caplog.records if WAITS in r.getMessage()]
    assert waits == [f"version {second} {WAITS}"]  # said once, not at every check


def test_serving_that_starts_during_a_round_loads_once_the_turn_is_free(
    tiny_package: Path, tmp_path: Path
) -> None:
    # Prepare
    registry = ModelRegistry(tmp_path / "registry")
    version = publish(registry, tiny_package, "only")
    state = tmp_path / "state"
    cfg = config_for(
        registry=registry.root, state_dir=state, backend="onnx-int4", watch_interval_s=POLL_S
    )
    # Execute
    with holder(registry.root) as proc, running(cfg, ready=False) as (server, port):
        # Assert: not ready while the round runs, ready and answering after it
        assert not server.wait_ready(40 * POLL_S) and _exports(state) == []
        proc.kill()
        proc.wait()
        assert server.wait_ready(120)
        with NerClient(f"127.0.0.1:{port}") as client:
            assert client.analyze(NOTE).model_version == version
