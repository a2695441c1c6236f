"""The consortium's warm start: made from public notes by the CLI, the ServerApp's round 0, and
refused when it does not fit the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main
from federation.server_app import initial_global
from federation.task import HospitalNode
from federation.warm_start import load_warm_start
from tests.appliance.corpus import write_jsonl
from tests.federation.helpers import corpus, tiny_config


@pytest.fixture(scope="module")
def made(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("warm")
    public = write_jsonl(root / "public.jsonl", 120, seed=11)
    out = root / "warm.npz"
    args = ["federate", "warm-start", "--notes", str(public), "--out", str(out), "--epochs", "4",
            "--batch-size", "8", "--state-dir", str(root / "state"),
            "--run-config", f'base="{tiny_llama}"', "--run-config", "layers=top:2",
            "--run-config", "mode=layers",
            "--run-config", "head-learning-rate=0.01",
            "--run-config", "learning-rate=0.003"]  # fmt: skip
    assert main(args) == 0
    return out, {"base": str(tiny_llama)}


def test_the_server_starts_round_0_from_the_warm_start_and_it_tags_entities(
    tiny_llama: Path, tmp_path: Path, made, capsys: pytest.CaptureFixture
):
    out, _ = made
    cfg = tiny_config(tiny_llama, learning_rate=3e-3, head_learning_rate=1e-2)
    _, names, seeded = initial_global(cfg, tmp_path / "server")
    resolved, warm_names, warm = initial_global(
        tiny_config(tiny_llama, warm_start=str(out)), tmp_path / "server"
    )
    assert warm_names == names and resolved.warm_start == str(out)
    assert any(not np.array_equal(warm[k], seeded[k]) for k in names)
    with np.load(out) as data:
        assert all(np.array_equal(warm[k], data[k]) for k in names)
    test = corpus(tmp_path / "test", 40, seed=2)
    node = HospitalNode.load(cfg, [], tmp_path / "node", "h")
    assert node.score(warm, test)["f1"] > node.score(seeded, test)["f1"] + 0.3


def test_dp_from_the_seeded_start_is_warned_about(
    tiny_llama: Path, tmp_path: Path, made, caplog: pytest.LogCaptureFixture
):
    out, _ = made
    warned = "DP-SGD from the seeded start: noisy rounds on a few hundred notes"
    for cfg, expected in (
        (tiny_config(tiny_llama, dp=True), True),
        (tiny_config(tiny_llama, dp=True, warm_start=str(out)), False),
        (tiny_config(tiny_llama), False),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="federation.server_app"):
            initial_global(cfg, tmp_path / "server")
        assert (warned in caplog.text) is expected, caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": "top:1"}, "made for layers = 'top:2', the run has 'top:1'"),
        ({"mode": "lora"}, "made for mode = 'layers', the run has 'lora'"),
        ({"labels": ("Chemical",)}, "made for labels"),
    ],
)
def test_a_warm_start_made_for_other_settings_is_refused(
    tiny_llama: Path, tmp_path: Path, made, change: dict, message: str
):
    out, _ = made
    with pytest.raises(ValueError, match=message):
        initial_global(tiny_config(tiny_llama, warm_start=str(out), **change), tmp_path / "s")


def test_a_damaged_or_foreign_file_is_refused_by_name(tiny_llama: Path, tmp_path: Path, made):
    out, _ = made
    cfg = tiny_config(tiny_llama)
    _, names, seeded = initial_global(cfg, tmp_path / "server")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(out.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated.npz: not a warm start"):
        load_warm_start(truncated, cfg, seeded)
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    poisoned = dict(arrays)
    poisoned[names[0]] = np.full_like(arrays[names[0]], np.nan)
    np.savez(tmp_path / "nan.npz", **poisoned)
    with pytest.raises(ValueError, match=rf"{names[0]} holds non-finite values"):
        load_warm_start(tmp_path / "nan.npz", cfg, seeded)
    short = {k: v for k, v in arrays.items() if k != names[0]}
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(ValueError, match="tensors missing"):
        load_warm_start(tmp_path / "short.npz", cfg, seeded)
    with pytest.raises(ValueError, match="missing.npz: not a warm start"):
        load_warm_start(tmp_path / "missing.npz", cfg, seeded)


def test_the_command_names_a_bad_notes_line_and_a_bad_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    bad = tmp_path / "public.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "ok", "entities": []}) + "\n{broken\n")
    out = tmp_path / "warm.npz"
    assert main(["federate", "warm-start", "--notes", str(bad), "--out", str(out)]) == 3
    assert "public.jsonl:2" in capsys.readouterr().err
    args = ["federate", "warm-start", "--notes", str(bad), "--out", str(out)]
    assert main([*args, "--run-config", "no-such-key=1"]) == 2
    assert "unknown run-config key 'no-such-key'" in capsys.readouterr().err
    assert main([*args, "--run-config", "rounds"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not out.exists()
