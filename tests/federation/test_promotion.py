"""Promotion: publish into the registry, move `current` only for a model that is not worse."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from appliance.readers import read_jsonl
from appliance.registry import ModelRegistry
from federation.daemon import NightlyDaemon
from federation.exporter import DaemonMetrics
from federation.journal import RoundJournal, read_journal
from federation.promotion import heldout_f1, promote_if_not_worse
from tests.appliance.corpus import write_jsonl
from tests.conftest import train_tiny_package
from tests.federation.helpers import daemon_config


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory):
    path = write_jsonl(tmp_path_factory.mktemp("heldout") / "heldout.jsonl", 40, seed=7)
    return read_jsonl(path).notes


@pytest.fixture(scope="module")
def weak_package(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuinely worse model: only the head, one epoch."""
    return train_tiny_package(tiny_llama, tmp_path_factory.mktemp("weak"), spec="head", epochs=1)


def test_first_model_is_promoted_then_a_worse_one_is_kept_out(
    tiny_package: Path, weak_package: Path, heldout, tmp_path: Path
):
    journal = RoundJournal(tmp_path / "journal.jsonl")
    registry = ModelRegistry(tmp_path / "registry")
    first = promote_if_not_worse(
        registry.root, tiny_package, heldout, 0.01, tmp_path, journal=journal, server_round=1
    )
    assert first.promoted and first.reason.startswith("first model")
    assert registry.current().version == first.version
    good_f1 = heldout_f1(tiny_package, heldout, tmp_path)
    weak_f1 = heldout_f1(weak_package, heldout, tmp_path)
    assert weak_f1 < good_f1 - 0.05
    second = promote_if_not_worse(
        registry.root, weak_package, heldout, 0.01, tmp_path, journal=journal, server_round=2
    )
    assert second.outcome == "kept" and registry.current().version == first.version
    assert second.candidate_f1 == pytest.approx(weak_f1)
    assert second.current_f1 == pytest.approx(good_f1)
    assert second.version in registry.versions()
    events = [(e["event"], e["version"]) for e in registry.history()]
    assert ("promote", first.version) in events and ("reject", second.version) in events
    outcomes = [e.fields["outcome"] for e in read_journal(journal.path)]
    assert outcomes == ["promoted", "kept"]


def test_an_equal_model_within_tolerance_is_promoted(tiny_package: Path, heldout, tmp_path: Path):
    registry = ModelRegistry(tmp_path / "registry")
    promote_if_not_worse(registry.root, tiny_package, heldout, 0.0, tmp_path)
    again = promote_if_not_worse(registry.root, tiny_package, heldout, 0.0, tmp_path)
    assert again.promoted and registry.current().version == again.version


def test_a_broken_candidate_never_becomes_current(tiny_package: Path, heldout, tmp_path: Path):
    registry = ModelRegistry(tmp_path / "registry")
    good = promote_if_not_worse(registry.root, tiny_package, heldout, 0.01, tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_package, broken)
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    decision = promote_if_not_worse(registry.root, broken, heldout, 0.01, tmp_path)
    assert decision.outcome == "broken" and "does not load" in decision.reason
    assert registry.current().version == good.version


def test_a_node_s_own_score_stands_for_the_candidate_and_a_damaged_one_is_broken(
    tiny_package: Path, heldout, tmp_path: Path
):
    # Prepare: a current model, and the candidate's score as a node measured it
    registry = ModelRegistry(tmp_path / "registry")
    current = promote_if_not_worse(registry.root, tiny_package, heldout, 0.01, tmp_path)
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_package, damaged)
    weights = damaged / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes

    # Execute
    kept = promote_if_not_worse(
        registry.root, tiny_package, heldout, 0.01, tmp_path, candidate_f1=0.0
    )
    broken = promote_if_not_worse(registry.root, damaged, heldout, 0.01, tmp_path, candidate_f1=1.0)

    # Assert: the given score decided (the same weights would have scored as the current)
    assert kept.outcome == "kept" and kept.candidate_f1 == 0.0
    assert kept.current_f1 == pytest.approx(current.candidate_f1)
    assert broken.outcome == "broken" and "sha256" in broken.reason
    assert registry.current().version == current.version


def test_promotion_needs_heldout_notes(tiny_package: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="held-out notes"):
        promote_if_not_worse(tmp_path / "r", tiny_package, [], 0.01, tmp_path)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _export(exports: Path, name: str, package: Path) -> Path:
    """An ONNX export directory as serving leaves it (export.json names its package)."""
    (exports / name).mkdir(parents=True)
    (exports / name / "export.json").write_text(json.dumps({"package": str(package)}))
    return exports / name


def test_the_daemon_prunes_after_a_promotion_and_reports_the_disk(
    tiny_package: Path, heldout, tmp_path: Path
):
    # Prepare: three promoted versions and serving's export of the first; the journal only says
    # that a candidate was kept out
    exports = tmp_path / "serving" / "exports"
    cfg = daemon_config(tmp_path, keep_versions=1, serving_exports=exports)
    registry, journal = ModelRegistry(cfg.registry), RoundJournal(cfg.journal)
    old = []
    for label in ("seed", "n1", "n2"):
        old.append(registry.promote(registry.publish(tiny_package, label).version, "x").version)
    first_export = _export(exports, "onnx-int8-first", registry.path(old[0]))
    journal.record("promotion", outcome="kept", version=old[2])
    metrics = DaemonMetrics(cfg.hospital)
    port = metrics.serve("127.0.0.1", 0)
    daemon = NightlyDaemon(cfg, clock=lambda: dt.datetime(2026, 11, 22, 12), metrics=metrics)
    try:
        # Execute: a tick after the kept round, a promotion through the ClientApp's path, a tick
        daemon.tick()
        before = registry.versions()
        new = promote_if_not_worse(
            registry.root, tiny_package, heldout, 0.0, tmp_path, journal=journal
        )
        new_export = _export(exports, "onnx-int8-new", registry.path(new.version))
        daemon.tick()
        text = _scrape(port)
    finally:
        metrics.close()
    # Assert: nothing pruned without a promotion; then current (the newest) and previous stay
    assert before == old and new.promoted
    assert registry.versions() == [old[2], new.version] and registry.previous() == old[2]
    assert not first_export.exists() and new_export.is_dir()
    h = 'hospital="hospital-a"'
    assert f"appliance_registry_versions{{{h}}} 2.0" in text
    assert f"appliance_registry_bytes{{{h}}} {float(registry.size_bytes())}" in text
    ratio = re.search(rf"appliance_state_disk_used_ratio{{{h}}} (\S+)", text)
    assert ratio is not None and 0.0 < float(ratio.group(1)) < 1.0
