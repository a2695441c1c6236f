"""`appliance registry list | rollback | prune` on a registry of real model packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import EXIT_USAGE, main
from appliance.package_meta import read_package_meta, verified_weights_sha256
from appliance.registry import ModelRegistry


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["registry", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, err


@pytest.fixture
def registry(tiny_package: Path, tmp_path: Path) -> ModelRegistry:
    """Four nights of the tiny package: 1, 2 and 4 promoted, 3 rejected."""
    registry = ModelRegistry(tmp_path / "registry")
    for night in range(1, 5):
        version = registry.publish(tiny_package, f"round-{night}").version
        if night == 3:
            registry.record("reject", version, "worse", candidate_f1=0.5)
        else:
            registry.promote(version, "not worse", candidate_f1=[0, 0.81, 0.82, 0, 0.84][night])
    return registry


def test_list_shows_versions_current_previous_sizes_and_times(
    registry: ModelRegistry, capsys: pytest.CaptureFixture[str]
):
    # Execute
    code, listing, _ = _run(capsys, "list", "--registry", str(registry.root))
    # Assert
    assert code == 0
    names = registry.versions()
    assert listing["current"] == names[3] and listing["previous"] == names[1]
    assert [v["version"] for v in listing["versions"]] == names
    assert [(v["current"], v["previous"]) for v in listing["versions"]] == [
        (False, False),
        (False, True),
        (False, False),
        (True, False),
    ]
    weights = (registry.path(names[0]) / "weights.safetensors").stat().st_size
    assert all(v["bytes"] > weights for v in listing["versions"])
    assert listing["bytes"] == sum(v["bytes"] for v in listing["versions"])
    assert all(v["published"].startswith("20") for v in listing["versions"])
    assert [v["f1"] for v in listing["versions"]] == [0.81, 0.82, 0.5, 0.84]


def test_rollback_moves_current_and_refuses_unknown_versions(
    registry: ModelRegistry, capsys: pytest.CaptureFixture[str]
):
    names = registry.versions()
    # Execute
    code, done, _ = _run(capsys, "rollback", names[1], "--registry", str(registry.root))
    # Assert: current is the older version, whole, and the history says why
    assert code == 0 and done == {
        "registry": str(registry.root),
        "current": names[1],
        "was": names[3],
    }
    current = registry.current()
    assert current is not None and current.version == names[1]
    meta = read_package_meta(current.path)
    assert verified_weights_sha256(current.path, meta) == meta["weights"]["sha256"]
    last = registry.history()[-1]
    assert (last["event"], last["version"], last["reason"]) == ("promote", names[1], "rollback")
    assert registry.previous() == names[3]
    code, _, err = _run(capsys, "rollback", "000099-nope", "--registry", str(registry.root))
    assert code == EXIT_USAGE
    assert f"{registry.root}: no version '000099-nope' to roll back to" in err
    code, _, err = _run(capsys, "rollback", names[1], "--registry", str(registry.root))
    assert code == EXIT_USAGE and f"{registry.root}: {names[1]} is already current" in err
    assert registry.current() == current


def test_prune_keeps_current_previous_and_newest(
    registry: ModelRegistry, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    names = registry.versions()
    exports = tmp_path / "exports"
    (exports / "onnx-int8-abc").mkdir(parents=True)
    (exports / "onnx-int8-abc" / "export.json").write_text(
        json.dumps({"package": str(registry.path(names[0]))})
    )
    # Execute
    code, done, _ = _run(
        capsys, "prune", "--registry", str(registry.root), "--keep", "1", "--exports", str(exports)
    )
    # Assert
    assert code == 0
    assert done["removed"] == [names[0], names[2]] and done["kept"] == [names[1], names[3]]
    assert done["exports"] == ["onnx-int8-abc"] and done["keep"] == 1
    assert registry.versions() == [names[1], names[3]] and not any(exports.iterdir())
    code, _, err = _run(capsys, "prune", "--registry", str(registry.root), "--keep", "0")
    assert code == EXIT_USAGE and "keep must be a whole number of versions >= 1, got 0" in err


def test_a_directory_that_is_not_a_registry_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    for argv in (["list"], ["prune"], ["rollback", "000001-x"]):
        code, _, err = _run(capsys, *argv, "--registry", str(tmp_path / "nowhere"))
        assert code == EXIT_USAGE
        assert f"{tmp_path / 'nowhere'}: not a model registry (no versions/ directory)" in err
