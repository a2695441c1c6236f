"""Quantized backends against the torch-fp32 reference; the ONNX export, its cache and failures.

Stated tolerance (also in the README): on a fixed set of 40 synthetic notes, each quantized
backend's entities agree with torch-fp32's at entity-set F1 >= 0.95, and its per-word tag
log-probabilities differ by at most 0.2 on average (the tiny model measures about 0.05).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from appliance.decoding import assemble
from appliance.encoding import encode_notes
from appliance.notes import Note
from appliance.readers import read_jsonl
from serving.backends import load_backend
from serving.backends.base import Backend, BackendError, BackendOptions
from serving.backends.onnx_export import INFO_FILE, MODEL_FILE, TOKENIZER_DIR
from serving.client import NerClient
from tests.appliance.corpus import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
Entities = set[tuple[int, int, int, str]]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-state")


@pytest.fixture(scope="module")
def fixed_notes(tmp_path_factory: pytest.TempPathFactory) -> list[Note]:
    path = write_jsonl(tmp_path_factory.mktemp("fixed") / "notes.jsonl", 40, seed=7)
    return read_jsonl(path).notes


def _run(backend: Backend, notes: list[Note]) -> tuple[list[np.ndarray], Entities]:
    windows = encode_notes(backend.tokenizer, notes, None, 256, 32)
    log_probs = backend.log_probs(windows)
    predictions = assemble(len(notes), windows, log_probs, backend.labels)
    spans = {(i, s.start, s.end, s.label) for i, p in enumerate(predictions) for s in p.spans}
    return log_probs, spans


@pytest.fixture(scope="module")
def reference(
    tiny_package: Path, state_dir: Path, fixed_notes: list[Note]
) -> tuple[list[np.ndarray], Entities]:
    return _run(load_backend("torch-fp32", tiny_package, BackendOptions(state_dir)), fixed_notes)


@pytest.fixture(scope="module")
def onnx_backend(tiny_package: Path, state_dir: Path) -> Iterator[Backend]:
    backend = load_backend("onnx-int4", tiny_package, BackendOptions(state_dir))
    yield backend
    backend.close()


@pytest.mark.parametrize("name", ["onnx-int4", "onnx-int8", "torch-nf4"])
def test_quantized_backend_matches_fp32(
    name: str,
    tiny_package: Path,
    state_dir: Path,
    fixed_notes: list[Note],
    reference: tuple[list[np.ndarray], Entities],
) -> None:
    backend = load_backend(name, tiny_package, BackendOptions(state_dir))
    log_probs, entities = _run(backend, fixed_notes)
    ref_log_probs, ref_entities = reference
    assert len(ref_entities) > 40, (
        "the reference must find entities for the comparison to mean much"
    )
    agreement = 2 * len(entities & ref_entities) / (len(entities) + len(ref_entities))
    assert agreement >= 0.95, f"{name}: entities agree with torch-fp32 at F1 {agreement:.3f}"
    pairs = zip(log_probs, ref_log_probs, strict=True)
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in pairs])
    assert diff.mean() <= 0.2, f"{name}: mean |log-prob difference| {diff.mean():.3f}"
    assert backend.quantization in ("int4", "int8", "nf4")


def test_onnx_int8_answer_does_not_depend_on_the_batch(
    tiny_package: Path, state_dir: Path, fixed_notes: list[Note]
) -> None:
    """int8 activations are quantized with one scale per run: each window must run alone."""
    backend = load_backend("onnx-int8", tiny_package, BackendOptions(state_dir))
    windows = encode_notes(backend.tokenizer, fixed_notes[:12], None, 256, 32)
    assert len(windows) > 4
    together = backend.log_probs(windows)
    for window, batched in zip(windows, together, strict=True):
        assert np.array_equal(backend.log_probs([window])[0], batched)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # q, k, v, o, gate, up, down per layer: all 4-bit
        ("onnx-int4", {"MatMulNBits": 7, "int8": 0}),
        # six int8 (VNNI/AMX) MatMuls per layer; down_proj stays 4-bit (outlier activations)
        ("onnx-int8", {"MatMulNBits": 1, "int8": 6}),
    ],
)
def test_onnx_export_recipe_and_cache(
    name: str, expected: dict[str, int], tiny_package: Path, state_dir: Path
) -> None:
    backend = load_backend(name, tiny_package, BackendOptions(state_dir))
    export_dir = backend.export_dir  # type: ignore[attr-defined]
    ops = [node.op_type for node in onnx.load(str(export_dir / MODEL_FILE)).graph.node]
    layers = 4  # the tiny Llama
    assert ops.count("MatMulNBits") == expected["MatMulNBits"] * layers
    int8 = ops.count("MatMulIntegerToFloat") + ops.count("DynamicQuantizeMatMul")
    assert int8 == expected["int8"] * layers
    assert ops.count("GatherBlockQuantized") == 1  # the token embedding is 4-bit too
    # the served files and nothing else: no fp32 or intermediate model, no tensor files
    assert sorted(p.name for p in export_dir.iterdir()) == [INFO_FILE, MODEL_FILE, TOKENIZER_DIR]
    info_mtime = (export_dir / INFO_FILE).stat().st_mtime_ns
    again = load_backend(name, tiny_package, BackendOptions(state_dir))
    assert again.export_dir == export_dir  # type: ignore[attr-defined]
    assert (export_dir / INFO_FILE).stat().st_mtime_ns == info_mtime  # not exported twice


def test_onnx_export_failure_is_a_backend_error(
    tiny_package: Path, tmp_path: Path, state_dir: Path
) -> None:
    broken = tmp_path / "package"
    shutil.copytree(tiny_package, broken)
    meta = json.loads((broken / "package.json").read_text())
    meta["base"]["spec"] = str(tmp_path / "no-such-base")
    (broken / "package.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError, match=r"ONNX export failed .*no-such-base"):
        load_backend("onnx-int4", broken, BackendOptions(state_dir))
    assert not list((state_dir / "exports").glob("*.partial-*")), "a failed export left debris"


def test_serve_onnx_in_a_process_without_torch(
    onnx_backend: Backend, tiny_package: Path, state_dir: Path
) -> None:
    """`appliance serve --backend onnx-int4` answers without ever loading libtorch."""
    argv = [sys.executable, "-m", "appliance.cli", "serve", "--backend", "onnx-int4"]
    argv += ["--package", str(tiny_package), "--state-dir", str(state_dir), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"serving on (\S+):(\d+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {proc.stderr.read()[-2000:]}"  # type: ignore[union-attr]
        with NerClient(f"127.0.0.1:{match.group(2)}") as client:
            client.wait_ready(60)
            result = client.analyze("The patient was given aspirin and developed fever.")
        assert {e.category for e in result.entities} == {"Chemical", "Disease"}
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps, "the onnx-int4 server process loaded torch"
        assert "onnxruntime" in maps
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
