"""`appliance federate`: status, manual promotion, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.cli import main
from tests.appliance.corpus import write_jsonl


def _write_config(tmp_path: Path, heldout: Path) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        "[daemon]\n"
        'hospital = "hospital-a"\n'
        'superlink = "127.0.0.1:9092"\n'
        "insecure = true\n"
        f'notes = "{heldout}"\n'
        f'heldout = "{heldout}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'registry = "{tmp_path / "registry"}"\n'
    )
    return path


def test_promote_then_status(tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    config = _write_config(tmp_path, write_jsonl(tmp_path / "heldout.jsonl", 30, seed=5))
    assert (
        main(["federate", "promote", "--config", str(config), "--candidate", str(tiny_package)])
        == 0
    )
    decision = json.loads(capsys.readouterr().out)
    assert decision["outcome"] == "promoted" and decision["candidate_f1"] > 0.5
    assert main(["federate", "status", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current"] == decision["version"] and status["versions"] == 1
    assert status["last_events"][-1]["event"] == "promotion"


def test_bad_config_and_bad_candidate_are_clear_errors(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    assert main(["federate", "status", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: cannot read daemon config" in capsys.readouterr().err
    config = _write_config(tmp_path, tmp_path / "no-heldout.jsonl")
    assert (
        main(["federate", "promote", "--config", str(config), "--candidate", str(tiny_package)])
        == 3
    )
    assert "held-out notes" in capsys.readouterr().err
    heldout = write_jsonl(tmp_path / "heldout.jsonl", 10, seed=5)
    config = _write_config(tmp_path, heldout)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_package, broken)
    (broken / "package.json").write_text("{")
    assert main(["federate", "promote", "--config", str(config), "--candidate", str(broken)]) == 4
    assert "not promoted, does not load" in capsys.readouterr().err


def test_certs_are_written_private_and_never_overwritten(tmp_path: Path, capsys):
    out = tmp_path / "certs"
    assert main(["federate", "certs", "--out", str(out), "--hospitals", "a", "b"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert {"ca", "cert", "key", "a.key", "a.pub", "b.key", "b.pub"} <= set(paths)
    assert (out / "a.key").stat().st_mode & 0o077 == 0
    assert (out / "a.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert main(["federate", "certs", "--out", str(out), "--hospitals", "a"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
