"""Faults that must lose nothing, on real servers: a registry writer killed part way, a version
with truncated files, a disk that fills up during an ONNX export. The old model keeps serving."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from appliance.errors import PackageError
from appliance.package import read_package
from appliance.registry import ModelRegistry, RegistryVersion
from serving.client import NerClient
from serving.metrics import ServingMetrics
from tests.appliance.test_registry import killed_writer
from tests.serving.servers import config_for, publish, running

NOTE = "the patient was given aspirin and developed fever"
SWAPS = "appliance_ner_model_swaps_total"
FAILED = "appliance_ner_model_swap_failures_total"
EXPORT_FAILED = "appliance_ner_export_failures_total"
POLL_S = 0.05


def _wait_for(done: Callable[[], bool], timeout: float = 60) -> None:
    until = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.05)


def _reached(metrics: ServingMetrics, name: str, count: int) -> Callable[[], bool]:
    return lambda: metrics.value(name) >= count


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def _copy(package: Path, folder: Path, **meta_changes: object) -> Path:
    """A copy of `package` with `meta_changes` in its package.json (same weights)."""
    shutil.copytree(package, folder)
    meta = json.loads((folder / "package.json").read_text())
    meta.update(meta_changes)
    (folder / "package.json").write_text(json.dumps(meta, indent=2))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- a registry writer killed part way ------------------------------------------------------


def test_a_killed_registry_writer_leaves_the_old_model_serving(
    tiny_package: Path, tmp_path: Path
) -> None:
    # Prepare
    registry = ModelRegistry(tmp_path / "registry")
    first = publish(registry, tiny_package, "first")
    cfg = config_for(registry=registry.root, state_dir=tmp_path, watch_interval_s=POLL_S)
    with running(cfg) as (server, port), NerClient(f"127.0.0.1:{port}") as client:
        # Execute: one writer dies mid-copy, another after its copy but before `promote`
        half = killed_writer(registry.root, "mid-write", tiny_package)
        whole = killed_writer(registry.root, "before-promote", tiny_package)
        time.sleep(20 * POLL_S)
        # Assert
        assert client.analyze(NOTE).model_version == first
        assert registry.current() == RegistryVersion(first, registry.path(first))
        assert registry.versions() == [first, whole]
        assert server.engine.metrics.value(FAILED) == 0
        later = publish(registry, tiny_package, "later")  # the next writer is not blocked
        _wait_for(lambda: client.analyze(NOTE).model_version == later)
    assert [v[:6] for v in (first, half, whole, later)] == ["000001", "000002", "000003", "000004"]
    assert server.engine.metrics.value(SWAPS) == 2


# --- a version with truncated files ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("weights.safetensors", r"\d+ bytes, but package.json records \d+; the file is truncated"),
        ("package.json", r"not valid JSON .*; the file is truncated"),
    ],
    ids=["weights", "package.json"],
)
def test_a_truncated_version_is_refused_once_and_the_old_one_serves(
    name: str, says: str, tiny_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    caplog.set_level(logging.INFO, logger="serving.watcher")
    registry = ModelRegistry(tmp_path / "registry")
    first = publish(registry, tiny_package, "first")
    broken = _copy(tiny_package, tmp_path / "broken")
    _truncate(broken / name)
    cfg = config_for(registry=registry.root, state_dir=tmp_path, watch_interval_s=POLL_S)
    with running(cfg) as (server, port), NerClient(f"127.0.0.1:{port}") as client:
        # Execute
        version = publish(registry, broken, "truncated")
        _wait_for(_reached(server.engine.metrics, FAILED, 1))
        time.sleep(20 * POLL_S)  # several more polls: refused once, not retried
        # Assert
        assert client.analyze(NOTE).model_version == first
    (message,) = _refusals(caplog)
    assert message.startswith(f"version {version} refused (BackendError: ")
    assert f"{version}/{name}" in message
    assert re.search(says, message), message
    assert message.endswith(f"still serving {first}")
    assert server.engine.metrics.value(FAILED) == 1


def test_packages_record_their_weights_and_old_ones_still_load(
    tiny_package: Path, tmp_path: Path
) -> None:
    # Prepare
    meta = json.loads((tiny_package / "package.json").read_text())
    weights = tiny_package / "weights.safetensors"
    old = _copy(tiny_package, tmp_path / "old")
    old_meta = json.loads((old / "package.json").read_text())
    del old_meta["weights"]
    (old / "package.json").write_text(json.dumps(old_meta))
    flipped = _copy(tiny_package, tmp_path / "flipped")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed in the last tensor
    (flipped / "weights.safetensors").write_bytes(bytes(data))
    # Execute / Assert
    assert meta["weights"]["bytes"] == weights.stat().st_size
    assert len(meta["weights"]["sha256"]) == 64
    package = read_package(old)
    assert package.tensors.keys() == load_file(str(weights)).keys()
    with pytest.raises(
        PackageError, match=r"flipped/weights.safetensors: sha256 \w+\.\.\. differs"
    ):
        read_package(flipped)


# --- a full disk during an ONNX export ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a state dir whose disk can really fill up."""
    folder = tmp_path / "state"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` up, then give back `leave` bytes."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    filler.open("r+b").truncate(filler.stat().st_size - leave)


def test_a_full_disk_during_export_is_reported_once_and_leaves_nothing(
    tiny_package: Path, tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the first version exported and serving
    caplog.set_level(logging.INFO, logger="serving.watcher")
    registry = ModelRegistry(tmp_path / "registry")
    first = publish(registry, tiny_package, "first")
    cfg = config_for(
        registry=registry.root, state_dir=small_disk, backend="onnx-int4", watch_interval_s=POLL_S
    )
    refused = []
    with running(cfg) as (server, port), NerClient(f"127.0.0.1:{port}") as client:
        exports = sorted(p.name for p in (small_disk / "exports").iterdir())
        # a disk already full; one that fills up while the ONNX model is written
        for count, leave in enumerate([0, 256 << 10], 1):
            _fill(small_disk, leave)
            label = f"left-{leave}"
            package = _copy(tiny_package, tmp_path / label, created=label)  # a new export key
            # Execute
            refused.append(publish(registry, package, label))
            _wait_for(_reached(server.engine.metrics, FAILED, count))
            time.sleep(20 * POLL_S)  # several more polls
            # Assert
            assert client.analyze(NOTE).model_version == first
            assert sorted(p.name for p in (small_disk / "exports").iterdir()) == exports
            (small_disk / "filler").unlink()
        metrics = server.engine.metrics
        assert metrics.value(EXPORT_FAILED, reason="no_space") == 2
        assert metrics.value(EXPORT_FAILED, reason="other") == 0
        assert metrics.value(FAILED) == 2
    messages = _refusals(caplog)
    assert len(messages) == 2  # once per version, not once per poll
    for version, message in zip(refused, messages, strict=True):
        assert message.startswith(f"version {version} refused (ExportError: ")
        assert "No space left on device" in message
        assert message.endswith(f"still serving {first}")
