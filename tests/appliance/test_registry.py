"""The model registry: versions, atomic `current`, history, and writers killed part way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.package_meta import read_package_meta, verified_weights_sha256, weights_record
from appliance.registry import PARTIAL_MAX_AGE_S, ModelRegistry, RegistryError, RegistryVersion

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


# Retention: prune, the loading hold, rollback targets, exports.

KEEP = 7


def _tiny_package(folder: Path, seed: int) -> Path:
    """A package.json recording its weights file's size and sha256, as real packages do."""
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(bytes([seed % 256]) * 4096 + seed.to_bytes(4))
    meta = {"format": "appliance-model-package/1", "weights": weights_record(folder)}
    (folder / "package.json").write_text(json.dumps(meta))
    return folder


def _assert_current_is_whole(registry: ModelRegistry) -> None:
    current = registry.current()
    assert current is not None and current.version in registry.versions()
    meta = read_package_meta(current.path)
    assert verified_weights_sha256(current.path, meta) == meta["weights"]["sha256"]


def test_400_nights_of_publish_promote_prune_stay_bounded(tmp_path: Path):
    # Prepare
    registry = ModelRegistry(tmp_path / "reg")
    package_bytes = 4096 + 4 + len(json.dumps({"format": "x", "weights": {}})) + 120
    most_bytes, promoted = 0, []
    # Execute: every 5th candidate is rejected, every 50th night IT rolls back
    for night in range(1, 401):
        slot = registry.publish(_tiny_package(tmp_path / "pkgs" / str(night), night), "night")
        if night % 5 == 0:
            registry.record("reject", slot.version, "F1 below current - tolerance")
        else:
            promoted.append(registry.promote(slot.version, "not worse").version)
        if night % 50 == 0:
            back = next(p for p in reversed(promoted) if p != promoted[-1])
            promoted.append(registry.promote(back, "rollback").version)
        result = registry.prune(KEEP)
        # Assert, every night: `current` whole and loadable, its rollback target kept, bounded
        _assert_current_is_whole(registry)
        assert registry.current() == RegistryVersion(promoted[-1], registry.path(promoted[-1]))
        before = [p for p in promoted if p != promoted[-1]]
        assert registry.versions() == list(result.kept)
        assert not before or before[-1] in result.kept
        assert slot.version in registry.versions()  # the newest candidate is never removed
        assert len(registry.versions()) <= KEEP + 2
        assert not result.held and not set(result.removed) & set(result.kept)
        most_bytes = max(most_bytes, registry.size_bytes())
    assert most_bytes <= (KEEP + 2) * package_bytes
    removed = [e["version"] for e in registry.history() if e["event"] == "remove"]
    assert len(removed) == 400 - len(registry.versions()) and len(set(removed)) == len(removed)
    assert not set(removed) & set(registry.versions())


def _night(registry: ModelRegistry, tmp_path: Path, count: int) -> list[str]:
    return [
        registry.publish(_tiny_package(tmp_path / "pkgs" / str(i), i), f"n{i}").version
        for i in range(count)
    ]


def test_prune_keeps_current_previous_newest_and_protected(tmp_path: Path):
    # Prepare: ten versions; 3 then 5 promoted (5 is current, 3 the rollback target)
    registry = ModelRegistry(tmp_path / "reg")
    v = _night(registry, tmp_path, 10)
    registry.promote(v[3], "first")
    registry.promote(v[5], "better")
    # Execute
    result = registry.prune(keep=2, protect=[v[0]])
    # Assert
    assert registry.versions() == [v[0], v[3], v[5], v[8], v[9]] == list(result.kept)
    assert result.removed == (v[1], v[2], v[4], v[6], v[7])
    events = [e for e in registry.history() if e["event"] == "remove"]
    assert [e["version"] for e in events] == list(result.removed)
    assert events[0]["reason"] == "retention: current, previous and the newest 2 are kept"
    assert (
        registry.current() == RegistryVersion(v[5], registry.path(v[5]))
        and registry.previous() == v[3]
    )
    with pytest.raises(ValueError, match="keep must be a whole number of versions >= 1, got 0"):
        registry.prune(keep=0)


def test_rollback_target_follows_the_promotions(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "reg")
    a, b, c = _night(registry, tmp_path, 3)
    assert registry.previous() is None
    for version in (a, b, c):
        registry.promote(version, "not worse")
    assert registry.previous() == b
    registry.promote(b, "rollback")
    assert registry.current() == RegistryVersion(b, registry.path(b)) and registry.previous() == c
    registry.prune(keep=1)
    assert registry.versions() == [b, c]  # c is both newest and the way back


HOLDER = """
import sys, time
from appliance.registry import ModelRegistry

with ModelRegistry(sys.argv[1]).loading(sys.argv[2]) as held:
    print(held.path, flush=True)
    time.sleep(600)
"""


def test_prune_never_removes_a_version_being_loaded(tmp_path: Path):
    # Prepare: another process (as serving's loader would) holds v[0]
    registry = ModelRegistry(tmp_path / "reg")
    v = _night(registry, tmp_path, 4)
    registry.promote(v[3], "first")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(registry.root), v[0]],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip()
    # Execute / Assert: held, then removed once the holder has died without letting go
    try:
        held = registry.prune(keep=1)
        assert held.held == (v[0],) and held.removed == (v[1], v[2])
        assert (registry.path(v[0]) / "weights.safetensors").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    assert registry.prune(keep=1).removed == (v[0],)
    assert registry.versions() == [v[3]]
    with pytest.raises(RegistryError, match=f"no version {v[0]}"), registry.loading(v[0]):
        pass


def test_prune_leaves_the_version_held_in_this_process_and_current(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "reg")
    v = _night(registry, tmp_path, 3)
    registry.promote(v[0], "first")
    with registry.loading(v[1]) as held:
        result = registry.prune(keep=1)
        assert held.path.is_dir() and result.held == (v[1],) and result.removed == ()
    assert registry.prune(keep=1).removed == (v[1],)
    assert registry.versions() == [v[0], v[2]]
    _assert_current_is_whole(registry)


def test_prune_removes_unfinished_writes_only_when_stale(tmp_path: Path):
    # Prepare: a publish under way, and a removal a killed prune left
    registry = ModelRegistry(tmp_path / "reg")
    (first,) = _night(registry, tmp_path, 1)
    registry.promote(first, "first")
    writing = registry.allocate("writing").partial
    writing.mkdir()
    dropped = registry.root / "versions" / "000000-old.removing"
    dropped.mkdir()
    (dropped / "weights.safetensors").write_bytes(b"x" * 10)
    # Execute / Assert
    assert registry.prune().leftovers == ("000000-old.removing",)
    assert writing.is_dir() and not dropped.exists()
    later = registry.prune(now=time.time() + 2 * PARTIAL_MAX_AGE_S)
    assert later.leftovers == (writing.name,) and not writing.exists()
    assert registry.versions() == [first]
    with pytest.raises(RegistryError, match="label"):
        registry.allocate("sneaky.removing")


def _export(exports: Path, name: str, package: Path | None) -> Path:
    folder = exports / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx" * 100)
    if package is not None:
        (folder / "export.json").write_text(json.dumps({"package": str(package)}))
    return folder


def test_prune_removes_the_exports_of_removed_versions_only(tmp_path: Path):
    # Prepare: exports of a version to be removed, of current, of a package outside the registry,
    # one being written and one without its record
    registry = ModelRegistry(tmp_path / "reg")
    v = _night(registry, tmp_path, 3)
    registry.promote(v[2], "first")
    exports = tmp_path / "state" / "exports"
    gone = _export(exports, "onnx-int8-aaa", registry.path(v[0]))
    kept = [
        _export(exports, "onnx-int8-bbb", registry.path(v[2])),
        _export(exports, "onnx-int4-ccc", tmp_path / "pkgs" / "0"),
        _export(exports, "onnx-int8-ddd.partial-123", registry.path(v[0])),
        _export(exports, "onnx-int8-eee", None),
    ]
    # Execute
    result = registry.prune(keep=1, exports=exports)
    # Assert
    assert result.removed == (v[0], v[1]) and result.exports == (gone.name,)
    assert not gone.exists() and all(folder.is_dir() for folder in kept)
    events = [e for e in registry.history() if e["event"] == "remove-export"]
    assert [(e["version"], e["reason"]) for e in events] == [
        (v[0], "ONNX export onnx-int8-aaa: its version is gone")
    ]
