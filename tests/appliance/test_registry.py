"""The model registry: versions, atomic `current`, history, and writers killed part way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.registry import ModelRegistry, RegistryError, RegistryVersion

ROOT = Path(__file__).resolve().parents[2]


def _publish(registry: ModelRegistry, label: str) -> str:
    slot = registry.allocate(label)
    slot.path.mkdir(parents=True)
    (slot.path / "package.json").write_text("{}")
    return slot.version


def test_versions_are_ordered_and_current_moves(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.current() is None and registry.versions() == []
    first = _publish(registry, "round-1")
    second = _publish(registry, "round-2")
    assert first.startswith("000001-") and second.startswith("000002-")
    registry.promote(first, "initial")
    assert registry.current() == RegistryVersion(first, registry.path(first))
    registry.promote(second, "f1 0.81 >= 0.80 - 0.01", f1=0.81)
    assert registry.current() == RegistryVersion(second, tmp_path / "reg" / "versions" / second)
    assert (tmp_path / "reg" / "current").is_symlink()
    events = registry.history()
    assert [e["event"] for e in events] == ["promote", "promote"]
    assert events[1]["f1"] == 0.81 and events[1]["version"] == second


def test_partial_versions_are_skipped_but_not_reused(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    (tmp_path / "versions" / "000001-a.partial").mkdir(parents=True)
    assert registry.versions() == []
    assert registry.allocate("b").version == "000002-b"


def test_bad_versions_and_labels_are_refused(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="label"):
        registry.allocate("../escape")
    with pytest.raises(RegistryError, match="not a registry version"):
        registry.promote("latest", "x")
    with pytest.raises(RegistryError, match="no version 000009-x"):
        registry.promote("000009-x", "x")


WRITER = """
import sys, time
from pathlib import Path
from appliance.registry import ModelRegistry

root, stage, source = sys.argv[1:4]
registry = ModelRegistry(root)
if stage == "mid-write":  # half the package copied into the slot's .partial directory
    slot = registry.allocate("crashed")
    slot.partial.mkdir()
    for path in sorted(Path(source).iterdir()):
        data = path.read_bytes()
        (slot.partial / path.name).write_bytes(data[: len(data) // 2])
else:  # "before-promote": the version is whole, `current` not moved yet
    slot = registry.publish(source, "crashed")
print(slot.version, flush=True)
time.sleep(600)
registry.promote(slot.version, "never reached")
"""


def killed_writer(root: Path, stage: str, source: Path) -> str:
    """Run a registry writer in its own process, SIGKILL it at `stage`; the version it wrote."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), stage, str(source)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    version = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    assert version, "the writer died before reaching its stage"
    return version


def _package(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "package.json").write_text('{"format": "appliance-model-package/1"}')
    (folder / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
    return folder


def test_a_writer_killed_mid_write_leaves_no_version(tmp_path: Path):
    # Prepare
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.publish(_package(tmp_path / "pkg"), "first").version
    registry.promote(first, "initial")
    # Execute
    crashed = killed_writer(registry.root, "mid-write", tmp_path / "pkg")
    # Assert
    assert (registry.root / "versions" / f"{crashed}.partial").is_dir()
    assert registry.versions() == [first]
    assert registry.current() == RegistryVersion(first, registry.path(first))
    with pytest.raises(RegistryError, match="not a registry version"):
        registry.promote(f"{crashed}.partial", "x")
    later = registry.publish(tmp_path / "pkg", "later").version
    assert crashed.startswith("000002-") and later.startswith("000003-")  # never reused
    assert [e["event"] for e in registry.history()] == ["publish", "promote", "publish"]


def test_a_writer_killed_before_promote_leaves_current_alone(tmp_path: Path):
    # Prepare
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.publish(_package(tmp_path / "pkg"), "first").version
    registry.promote(first, "initial")
    # Execute
    crashed = killed_writer(registry.root, "before-promote", tmp_path / "pkg")
    # Assert: the version is whole and listed, but `current` still points at the old one
    assert registry.versions() == [first, crashed]
    assert registry.current() == RegistryVersion(first, registry.path(first))
    copied = registry.path(crashed) / "weights.safetensors"
    assert copied.read_bytes() == (tmp_path / "pkg" / "weights.safetensors").read_bytes()
    assert not list((registry.root / "versions").glob("*.partial"))
    assert registry.allocate("next").version.startswith("000003-")


def test_a_history_line_cut_off_mid_write_is_dropped(tmp_path: Path):
    # Prepare: what a writer killed in the middle of appending an event leaves
    registry = ModelRegistry(tmp_path)
    first = registry.publish(_package(tmp_path / "pkg"), "first").version
    with (tmp_path / "history.jsonl").open("a") as handle:
        handle.write('{"event": "promote", "vers')
    # Execute / Assert
    assert [e["event"] for e in registry.history()] == ["publish"]
    registry.promote(first, "initial")
    assert [e["event"] for e in registry.history()] == ["publish", "promote"]
    (tmp_path / "history.jsonl").write_text('{"event": "publish"}\nnot json\n')
    with pytest.raises(RegistryError, match=r"history.jsonl:2: not a JSON event"):
        registry.history()
