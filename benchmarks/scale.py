"""The box at two sizes, side by side in one run: the embedded SmolLM2-135M and the LLaMA 3.2-1B
shape (random weights, benchmarks/llama_1b_shape.py).

    .venv/bin/python benchmarks/scale.py [--train-notes 32] [--serve-notes 16] \
        [--backends onnx-int4 onnx-int8] [--rounds layers+int8+adafactor lora+none] \
        [--models embedded llama-1b-shape] [--state-dir DIR]

Every step is its own process, measured from outside: wall seconds, GNU time's peak RSS (%M: the
kernel's ru_maxrss of the process and what it waited for) and the peaks of its process tree
sampled from /proc, resident and anonymous (benchmarks/tree_memory.py). Per model: loading the
base in fp32; one epoch on --train-notes BC5CDR sentences of `top:8` layers (`appliance train`)
and of LoRA on `top:8` (a hospital's node, benchmarks/scale_federation.py), each with the frozen
part in fp32 and in NF4; the ONNX export of the layers package per backend (seconds, peaks,
bytes on disk, the export folder's files); serving it per backend (note tokens/s at concurrency
1 and 8, peak RSS); the bytes one exchange carries per mode and compression; one real federated
round per --rounds entry (TLS SuperLink, two SuperNodes). Then the one-box memory plan.
Writes benchmarks/results/scale.md (and scale.json beside it; --out elsewhere; --from-record
rewrites the report from a scale.json without running anything).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.package_meta import read_package_meta, verified_weights_sha256  # noqa: E402
from benchmarks.llama_1b_shape import make_llama_1b_shape  # noqa: E402
from benchmarks.scale_federation import default_config, federated_round, run_config  # noqa: E402
from benchmarks.scale_report import write_report  # noqa: E402
from benchmarks.serving import CLI, build_notes, machine, run_backend, summarize  # noqa: E402
from benchmarks.tree_memory import TreePeak  # noqa: E402
from serving.backends.onnx_export import RECIPES, export_key  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
GIB = 1024**3
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
# `appliance train` runs: record key, frozen part in NF4, optimizer ("train" is the exported one)
TRAININGS = (
    ("train", False, "adamw"),
    ("train-nf4", True, "adamw"),
    ("train-nf4-adafactor", True, "adafactor"),
)


@dataclass
class Measured:
    """One child process: its command, exit code, wall seconds, GNU time's peak RSS (MB), the
    peaks of its process tree sampled from /proc (resident and anonymous, MB), its stdout."""

    command: str
    code: int
    seconds: float
    peak_mb: float
    tree_rss_mb: float = 0.0
    anon_mb: float = 0.0
    tail: str = ""
    stdout: str = ""


def measured(argv: list[str], timeout_s: float) -> Measured:
    """Run `argv` to the end (killed after `timeout_s`) and measure it from outside.

    GNU time starts it and reports its peak RSS: a process this one started directly would
    report at least this process's own peak (Linux carries the peak across fork and exec).
    """
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r") as report:
        timed = [TIME, "-f", "%M", "-o", report.name, *argv]
        proc = subprocess.Popen(
            timed,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        tree = TreePeak(proc.pid)
        try:
            out, raw = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # GNU time and the step it runs
            out, raw = proc.communicate()
            raw += f"\ntimed out after {timeout_s:.0f} s".encode()
        tree.stop()
        code, err = proc.returncode, raw.decode(errors="replace")
        peak_kb = report.read().strip().splitlines()[-1:] or ["0"]
    command = shlex.join([Path(a).name if a in (PY, CLI) else a for a in argv])
    tail = " | ".join(err.strip().splitlines()[-3:]) if code else ""
    peak_mb = int(peak_kb[0]) / 1024 if peak_kb[0].isdigit() else 0.0
    return Measured(
        command,
        code,
        time.monotonic() - started,
        peak_mb,
        round(tree.rss_mb),
        round(tree.anon_mb),
        tail,
        out.decode(errors="replace")[-2000:],
    )


def load_step(base: str, state_dir: Path) -> Measured:
    code = (
        "from appliance.config import ModelConfig; from appliance.model import load_model; "
        f"load_model(ModelConfig(base={base!r}), ('Chemical', 'Disease'), {str(state_dir)!r})"
    )
    return measured([PY, "-c", code], 1800)


def train_step(
    base: str, state_dir: Path, out: Path, notes: int, nf4: bool, optimizer: str
) -> dict[str, Any]:
    argv = [CLI, "train", "--base", base, "--state-dir", str(state_dir)]
    argv += ["--train", "data/bc5cdr/train.tsv", "--max-train-notes", str(notes)]
    argv += ["--epochs", "1", "--layers", "top:8", "--attention", "causal", "--no-progress"]
    argv += ["--out", str(out), "--optimizer", optimizer]
    argv += ["--quantization", "nf4"] if nf4 else []
    run = measured(argv, 3600)
    row: dict[str, Any] = {"run": run.__dict__}
    if run.code == 0:
        history = read_package_meta(out)["training"]["result"]["history"][-1]
        row["tokens_per_s"] = history["tokens_per_second"]
    return row


def lora_step(base: str, state_dir: Path, notes: int, nf4: bool) -> dict[str, Any]:
    """LoRA (the federation's rank 8) on `top:8`: one local epoch of a hospital's node."""
    argv = [PY, "-m", "benchmarks.scale_federation", "train", "--base", base, "--mode", "lora"]
    argv += ["--quantization", "nf4" if nf4 else "none", "--notes", str(notes)]
    run = measured(argv + ["--state-dir", str(state_dir)], 3600)
    row: dict[str, Any] = {"run": run.__dict__}
    if run.code == 0:
        row.update(json.loads(run.stdout.strip().splitlines()[-1]))
    return row


def export_step(backend: str, package: Path, state_dir: Path) -> dict[str, Any]:
    meta = read_package_meta(package)
    key = export_key(verified_weights_sha256(package, meta), meta, RECIPES[backend])
    target = state_dir / "exports" / f"{backend}-{key}"  # where serving looks for it
    _clear(target)
    argv = [PY, "-m", "serving.backends.onnx_export", "--backend", backend]
    argv += ["--package", str(package), "--state-dir", str(state_dir), "--out", str(target)]
    run = measured(argv, 3600)
    files = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if files else 0
    return {"run": run.__dict__, "files": files, "bytes": size}


def exchange_rows(package: Path, config: dict[str, Any]) -> dict[str, int]:
    """Bytes of one exchange's tensor data: `layers` top:8 + head per compression, and LoRA
    (rank 8, the federation's default, on the seven linears of each selected layer) + head."""
    meta = read_package_meta(package)
    trained = int(meta["exchange"]["trainable_parameters"])
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    shapes += [(hidden, inter), (hidden, inter), (inter, hidden)]
    head = hidden * len(meta["labels"]) + len(meta["labels"])
    lora = 8 * sum(8 * (a + b) for a, b in shapes) + head
    return {
        "layers top:8, fp32": trained * 4,
        "layers top:8, fp16 or bf16": trained * 2,
        "layers top:8, int8 deltas (blocks of 64)": trained + (trained // 64) * 4,
        "LoRA r=8 on top:8, fp32": lora * 4,
    }


def one_model(name: str, base: str, args: argparse.Namespace) -> dict[str, Any]:
    state = args.state_dir / "scale" / name  # packages; bases, caches, exports: the state dir
    state.mkdir(parents=True, exist_ok=True)
    print(f"[scale] {name}: load", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"base": base, "load": load_step(base, args.state_dir).__dict__}
    package = state / "top8"
    for key, nf4, optimizer in TRAININGS:
        print(f"[scale] {name}: {key}", file=sys.stderr, flush=True)
        target = state / ("top8" if key == "train" else f"top8-{key}")
        _clear(target)
        out[key] = train_step(base, args.state_dir, target, args.train_notes, nf4, optimizer)
    for nf4 in (False, True):
        print(f"[scale] {name}: LoRA nf4={nf4}", file=sys.stderr, flush=True)
        out[f"lora{'-nf4' if nf4 else ''}"] = lora_step(base, args.state_dir, args.train_notes, nf4)
    out["export"], out["serve"] = {}, {}
    from transformers import AutoConfig, AutoTokenizer

    base_dir = _base_dir(base, args.state_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    notes = build_notes(tokenizer, args.serve_notes, 500)
    texts, tokens = [n.text for n, _ in notes], sum(t for _, t in notes)
    for backend in args.backends:
        print(f"[scale] {name}: export + serve {backend}", file=sys.stderr, flush=True)
        out["export"][backend] = export_step(backend, package, args.state_dir)
        raw = run_backend(backend, package, args.state_dir, texts, [1, 8])
        out["serve"][backend] = summarize(backend, raw, [n for n, _ in notes], tokens)
    out["rounds"] = {}
    for spec in args.rounds:
        print(f"[scale] {name}: federated round {spec}", file=sys.stderr, flush=True)
        work = state / f"round-{spec.replace('+', '-')}"
        _clear(work)
        if spec.startswith("default"):  # default, or default+mbN: micro-batches of N windows
            cfg = default_config(base, int(spec.removeprefix("default").removeprefix("+mb") or 0))
        else:
            mode, compression, *optimizer = spec.split("+")
            cfg = run_config(base, mode, compression, "auto", *optimizer)
        out["rounds"][spec] = federated_round(
            base, args.state_dir, work, cfg, args.round_notes, args.round_heldout
        )
        if not out["rounds"][spec]["ok"]:  # the processes' logs say why; the rest is large
            _keep_logs(work, state / f"failed-round-{spec.replace('+', '-')}")
        _clear(work)
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    out["exchange"] = exchange_rows(package, config.to_dict())
    out["parameters"] = read_package_meta(package)["exchange"]["total_parameters"]
    return out


def _base_dir(base: str, state_dir: Path) -> str:
    if base != "embedded":
        return base
    return str(next((state_dir / "bases").glob("sha256-*")))  # the materialized GGUF


def _keep_logs(work: Path, folder: Path) -> None:
    import shutil

    _clear(folder)
    for log in work.rglob("*.log"):
        target = folder / log.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, target)
    print(f"[scale] the failed round's logs: {folder}", file=sys.stderr, flush=True)


def _clear(*paths: Path) -> None:
    import shutil

    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-notes", type=int, default=32)
    parser.add_argument("--serve-notes", type=int, default=16)
    parser.add_argument("--backends", nargs="*", default=["onnx-int4", "onnx-int8"])
    parser.add_argument("--models", nargs="+", default=["embedded", "llama-1b-shape"])
    parser.add_argument(
        "--rounds",
        nargs="*",
        default=["layers+int8+adafactor", "lora+none"],
        help="federated rounds to run, MODE+COMPRESSION[+OPTIMIZER] each (default adamw) of "
        "the plain recipe, or `default`: the federation's defaults (DP-SGD, LoRA r16; "
        "`default+mb8`: with micro-batches of 8 windows)",
    )
    parser.add_argument("--round-notes", type=int, default=16, help="training notes per node")
    parser.add_argument("--round-heldout", type=int, default=16, help="held-out notes per node")
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.md", help="with .json beside")
    parser.add_argument("--from-record", type=Path, help="only rewrite --out from a scale.json")
    parser.add_argument("--note", action="append", default=[], help="add a line to the notes")
    args = parser.parse_args()
    if args.from_record:
        record = json.loads(args.from_record.read_text(encoding="utf-8"))
        record["notes"] = record.get("notes", []) + args.note
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        write_report(args.out, record)
        return
    bases = {"embedded": "embedded", "llama-1b-shape": str(make_llama_1b_shape(args.state_dir))}
    started = time.monotonic()
    models = {name: one_model(name, bases[name], args) for name in args.models}
    record = {
        "command": "python " + shlex.join(["benchmarks/scale.py", *sys.argv[1:]]),
        "machine": machine(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "seconds": time.monotonic() - started,
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("out", "note")},
        "models": models,
        "notes": args.note,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    write_report(args.out, record)
    print(args.out)


if __name__ == "__main__":
    main()
