"""The model registry: versions, atomic `current`, history."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.registry import ModelRegistry, RegistryError


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
    assert registry.current().version == first
    registry.promote(second, "f1 0.81 >= 0.80 - 0.01", f1=0.81)
    current = registry.current()
    assert current.version == second and current.path == tmp_path / "reg" / "versions" / second
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
