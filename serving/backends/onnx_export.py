"""Export a model package to ONNX once, with quantized weights, for the ONNX Runtime backends.

The `onnx-int4` and `onnx-int8` backends call `ensure_export`, which runs this module in its own
process (`python -m serving.backends.onnx_export`) so the serving process never holds the fp32
torch model. The result is cached in `<state_dir>/exports/<backend>-<key>/`, where the key covers
the package's weights and metadata, the recipe and the library versions, so a stale export is
never read. A directory appears whole (written as `.partial-<pid>`, then renamed); a failed
export leaves nothing there. A failure raises `ExportError`, whose `reason` says whether the
state dir's disk was full (`no_space`) or something else went wrong (`other`).

Recipes (measured in benchmarks/results/serving.md). Both keep the classification head in fp32,
store the token embedding in 4 bits (GatherBlockQuantized, blocks of 32) and run ONNX Runtime's
graph fusions once offline.
- `onnx-int4`: every decoder MatMul becomes MatMulNBits, 4-bit asymmetric weights in blocks of 32
  along K (ONNX Runtime's MatMulNBits quantizer). `accuracy_level` 0 computes in fp32: on the
  Xeon we measured, level 4 (int8 compute) ran at 0.68x its speed on windows of ~250 tokens.
- `onnx-int8`: the attention projections and the MLP's gate/up MatMuls become int8 per-channel
  weights with activations quantized per batch (MatMulIntegerToFloat or DynamicQuantizeMatMul,
  as ONNX Runtime's dynamic quantizer and fusions make them: `dynamic_int8`), which ONNX
  Runtime runs on VNNI/AMX int8 instructions; `down_proj` stays weight-only 4-bit (MatMulNBits),
  because its input carries the outlier activations per-tensor int8 cannot hold (all-int8 cost
  4.9 F1 points on BC5CDR; see benchmarks/results/onnx_recipes.md).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from appliance.package_meta import verified_weights_sha256
from appliance.registry import EXPORT_INFO
from appliance.work_turn import work_turn
from serving.backends.base import BackendError

RECIPES: dict[str, dict[str, Any]] = {
    "onnx-int4": {
        "format": 1,
        "opset": 21,
        "matmul": "int4",
        "block_size": 32,
        "symmetric": False,
        "accuracy_level": 0,
        "embedding": "int4",
        "head": "fp32",
    },
    "onnx-int8": {
        "format": 1,
        "opset": 21,
        "matmul": "int8-dynamic",
        "int4_matmuls": ["down_proj"],
        "block_size": 32,
        "symmetric": False,
        "embedding": "int4",
        "head": "fp32",
    },
}
MODEL_FILE = "model.onnx"
FP32_FILE = "model.fp32.onnx"  # in the export's work folder, removed once quantized
MS = "com.microsoft"  # ONNX Runtime's contrib operators
QUANTIZED = ("quantized", "scale", "zero_point")  # suffixes of an int8 value's three tensors
INFO_FILE = EXPORT_INFO  # the registry prunes an export by the version this file names
TOKENIZER_DIR = "tokenizer"


NO_SPACE = "no_space"  # ExportError reasons, the label of appliance_ner_export_failures
OTHER = "other"
EXIT_NO_SPACE = 3  # the export process's exit code when the disk filled up
# Some writers (ONNX Runtime's protobuf serializer) hide the errno of a full disk: an export that
# failed with less than this free under the state dir is counted as out of space.
LOW_SPACE_BYTES = 1 << 20


class ExportError(BackendError):
    """The ONNX export failed; `reason` is NO_SPACE or OTHER."""

    def __init__(self, message: str, reason: str = OTHER) -> None:
        super().__init__(message)
        self.reason = reason


def export_key(weights_sha256: str, meta: dict[str, Any], recipe: dict[str, Any]) -> str:
    """What the export depends on: package weights and metadata, recipe, library versions."""
    from importlib.metadata import version

    parts = {
        "weights": weights_sha256,
        "meta": meta,
        "recipe": recipe,
        "versions": {n: version(n) for n in ("torch", "onnx", "onnxruntime", "transformers")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def partial_dir(target: Path, pid: int) -> Path:
    """Where the export process `pid` writes `target` before renaming it."""
    return target.with_name(f"{target.name}.partial-{pid}")


def ensure_export(
    backend: str,
    package_path: Path,
    meta: dict[str, Any],
    state_dir: Path,
    base: str | None,
    timeout_s: float = 3600,
    turn: Path | None = None,
) -> Path:
    """The cached export of `package_path` (whose package.json is `meta`) for `backend`,
    exported in a subprocess if missing, while holding the work turn of the registry `turn`
    when given (without waiting: TurnBusy if a node's round holds it). Raises ExportError (or
    PackageError for a package whose weights differ from its package.json)."""
    key = export_key(verified_weights_sha256(package_path, meta), meta, RECIPES[backend])
    target = state_dir / "exports" / f"{backend}-{key}"
    if (target / INFO_FILE).is_file():
        return target
    argv = [sys.executable, "-m", "serving.backends.onnx_export", "--backend", backend]
    argv += ["--package", str(package_path), "--state-dir", str(state_dir), "--out", str(target)]
    if base:
        argv += ["--base", base]
    with (
        work_turn(turn, f"serving's {backend} export of {package_path}", 0)
        if turn
        else nullcontext()
    ):
        code, said = _run_export(argv, target, timeout_s)
    if code != 0 or not (target / INFO_FILE).is_file():
        reason = NO_SPACE if code == EXIT_NO_SPACE else OTHER
        raise ExportError(f"{package_path}: ONNX export failed (exit {code}): {said}", reason)
    return target


def _run_export(argv: list[str], target: Path, timeout_s: float) -> tuple[int, str]:
    """Run the export process; (exit code, its last words). Whatever a killed or timed-out
    process left half-written is removed."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the export and the trace process it started
            out, err = proc.communicate()
            err += f"\nonnx export: timed out after {timeout_s:.0f} s\n"
        finally:
            shutil.rmtree(partial_dir(target, proc.pid), ignore_errors=True)
    lines = (err or out).strip().splitlines()
    own = [line for line in lines if line.startswith("onnx export: ")]
    return proc.returncode, own[-1] if own else " | ".join(lines[-5:])


def _trace_apart(
    package_path: Path, state_dir: Path, base: str | None, out: Path, work: Path, opset: int
) -> dict:
    """`onnx_trace.trace_fp32` in a process of its own: the torch model's memory goes back to
    the OS before quantizing (freed in this process, much of it would stay resident)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        job = pool.submit(
            _trace_fp32,
            package_path,
            state_dir,
            base,
            work / FP32_FILE,
            out / TOKENIZER_DIR,
            opset,
        )
        return job.result()


def _trace_fp32(*args: Any) -> dict:
    """The child's entry point: only the child imports torch."""
    from serving.backends.onnx_trace import trace_fp32

    return trace_fp32(*args)


def _quantize(work: Path, out: Path, recipe: dict[str, Any]) -> None:
    """fp32 ONNX in `work` -> the recipe's weights (`quantize_file`), ONNX Runtime's fusions run
    once offline, the result written to `out`; then `work` and every file in it is removed."""
    import onnxruntime as ort

    quantize_file(work / FP32_FILE, work / "model.q.onnx", recipe)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out / MODEL_FILE)
    ort.InferenceSession(str(work / "model.q.onnx"), options, providers=["CPUExecutionProvider"])
    shutil.rmtree(work)


def quantize_file(source: Path, target: Path, recipe: dict[str, Any]) -> None:
    """The traced fp32 model `source` with the recipe's weights (the head kept fp32), written
    whole to `target` in the same folder.

    The fp32 weights stay in the files the trace wrote beside `source`: the graph is loaded
    without them and each weight is read only while it is quantized, so this process holds the
    quantized model and one fp32 tensor, never the fp32 model. Quantization reads them relative
    to the model's folder, this process's working directory meanwhile (an export has a process
    of its own)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(source), load_external_data=False)
    names = [n.name for n in model.graph.node]
    head = [name for name in names if "/score/" in name]
    here = Path.cwd()
    os.chdir(source.parent)
    try:
        if recipe["matmul"] == "int8-dynamic":
            int4 = [n for n in names if any(f"/{part}/" in n for part in recipe["int4_matmuls"])]
            dynamic_int8(model, source.parent, head + int4)
        model = _nbits(model, ("MatMul", "Gather"), head, recipe)  # the MatMuls left
        load_external_data_for_model(model, str(source.parent))  # what stays fp32: head, norms
        onnx.save_model(model, str(target))
    finally:
        os.chdir(here)


def dynamic_int8(model: Any, folder: Path, exclude: list[str]) -> None:
    """Constant-weight MatMuls of `model` (its external data in `folder`) -> int8, as ONNX
    Runtime's `quantize_dynamic` (QInt8 weights per output channel, symmetric: scale
    max|w|/127 rounded to fp32, values rounded half to even) and its fusions make them: one
    DynamicQuantizeLinear per activation, shared by the MatMulIntegerToFloats that read it, or
    a DynamicQuantizeMatMul where one MatMul alone reads it. Unlike `quantize_dynamic`, it reads
    one weight at a time instead of loading the whole fp32 model."""
    from onnx import helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    chosen = {
        node.name: node.input[0]
        for node in graph.node
        if node.op_type == "MatMul"
        and node.name not in exclude
        and len(getattr(weights.get(node.input[1]), "dims", ())) == 2
    }
    readers = Counter(chosen.values())
    activations: dict[str, list[str]] = {}  # fp32 input -> its int8 value, scale, zero point
    nodes = []
    for node in graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        source, name = node.input[0], f"{node.name}_quant"
        b_value, b_scale, b_zero = _int8_weight(graph, weights[node.input[1]], folder)
        if readers[source] == 1:
            inputs = [source, b_value, b_scale, b_zero]
            op = "DynamicQuantizeMatMul"
        else:
            if source not in activations:  # quantized once, for every MatMul reading it
                activations[source] = [f"{source}_{part}" for part in QUANTIZED]
                quantize = helper.make_node(
                    "DynamicQuantizeLinear",
                    [source],
                    activations[source],
                    f"{source}_QuantizeLinear",
                )
                nodes.append(quantize)
            a_value, a_scale, a_zero = activations[source]
            inputs = [a_value, b_value, a_scale, b_scale, a_zero, b_zero]
            op = "MatMulIntegerToFloat"
        nodes.append(helper.make_node(op, inputs, node.output, name, domain=MS))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _int8_weight(graph: Any, weight: Any, folder: Path) -> list[str]:
    """Add the int8 form of the (K, N) fp32 initializer `weight` to `graph`; its three names."""
    from onnx import numpy_helper

    values, scale = _int8_per_channel(numpy_helper.to_array(weight, base_dir=str(folder)))
    names = [f"{weight.name}_{part}" for part in QUANTIZED]
    zero = np.zeros_like(scale, np.int8)
    graph.initializer.extend(
        numpy_helper.from_array(array, name)
        for array, name in zip((values, scale, zero), names, strict=True)
    )
    return names


def _int8_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, fp32 scale per column) of a (K, N) MatMul weight."""
    absmax = np.abs(weight).max(axis=0).astype(np.float64)
    scale = (2 * absmax / 254).astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    values = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    return values, scale


def _nbits(model: Any, ops: tuple[str, ...], exclude: list[str], recipe: dict[str, Any]) -> Any:
    """4-bit blocks for `ops` (MatMul -> MatMulNBits, Gather -> GatherBlockQuantized)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=recipe["block_size"],
        is_symmetric=recipe["symmetric"],
        accuracy_level=recipe.get("accuracy_level") or None,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        bits=4,
    )
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    quantizer.process()  # also declares the com.microsoft opset DynamicQuantizeMatMul needs
    quantizer.model.topological_sort()
    return quantizer.model.model


def export(
    backend: str, package_path: Path, state_dir: Path, base: str | None, target: Path
) -> dict:
    """Write the export directory `target` (atomically); returns what export.json records."""
    started = time.monotonic()
    target = target.absolute()  # the quantizer changes the working directory for a while
    tmp = partial_dir(target, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        recipe = RECIPES[backend]
        work = tmp / "work"
        work.mkdir()
        info = _trace_apart(package_path, state_dir, base, tmp, work, recipe["opset"])
        _quantize(work, tmp, recipe)
        info.update(
            backend=backend,
            recipe=recipe,
            package=str(package_path),
            bytes=(tmp / MODEL_FILE).stat().st_size,
            seconds=round(time.monotonic() - started, 1),
        )
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / INFO_FILE).is_file():
                raise
    except Exception as err:
        free = _free_bytes(target.parent)  # measured before the cleanup below frees space
        if _out_of_space(err) or (free is not None and free < LOW_SPACE_BYTES):
            raise ExportError(
                f"{os.strerror(errno.ENOSPC)} in {target.parent} ({free} bytes free): "
                f"{type(err).__name__}: {err}",
                NO_SPACE,
            ) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # another process exported it first, or failure
    return info


def _out_of_space(err: BaseException) -> bool:
    """True when `err` or what caused it is a full disk or quota (errno, or its text: the Rust
    and C++ writers under the exporters keep only the text)."""
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or os.strerror(errno.ENOSPC) in str(e)
        for e in chain
    )


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(RECIPES), required=True)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", help="where the base weights are on this box")
    args = parser.parse_args(argv)
    try:
        info = export(args.backend, args.package, args.state_dir, args.base, args.out)
    except ExportError as err:
        print(f"onnx export: {args.package}: {err}", file=sys.stderr)
        return EXIT_NO_SPACE if err.reason == NO_SPACE else 1
    except Exception as err:  # noqa: BLE001 - the process's answer is one line, not a traceback
        print(f"onnx export: {args.package}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
