"""Serving benchmark: each backend behind the real gRPC server vs the plain transformers pipeline.

    .venv/bin/python benchmarks/serving.py [--notes 64] [--concurrency 1 8 32] \
        [--backends onnx-int8 onnx-int4 torch-fp32 torch-nf4] [--state-dir DIR]

Notes of about 500 model tokens are built from consecutive BC5CDR test sentences (gold entities
kept). Every system runs in its own process, one after the other, on the same notes: each
backend as `appliance serve` (a real server, loaded and warmed before timing; ONNX exports are
made and cached before timing), and the baseline as `pipeline("token-classification")` in fp32
(benchmarks/serving_pipeline.py). Throughput counts the notes' own tokens (no window context),
so windowing overhead is charged to our backends. Strict F1 (seqeval, IOB2, word level) is of the
served output at concurrency 1. Peak RSS is the serving process's VmHWM.

The model is a `top:8` package of the embedded SmolLM2-135M trained with `--attention causal`, so
the plain Hugging Face forward used by the pipeline is exactly the served network. Writes
benchmarks/results/serving.md and serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.encoding import word_tags  # noqa: E402
from appliance.evaluation import entity_scores  # noqa: E402
from appliance.notes import EntitySpan, Note  # noqa: E402
from appliance.readers import read_conll  # noqa: E402
from benchmarks.serving_pipeline import peak_rss_mb  # noqa: E402
from benchmarks.soak_server import serving_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLI = str(ROOT / ".venv" / "bin" / "appliance")
PACKAGE_ARGS = [
    "--train", "data/bc5cdr/train.tsv", "--dev", "data/bc5cdr/devel.tsv",
    "--max-train-notes", "2000", "--max-dev-notes", "500", "--epochs", "2",
    "--layers", "top:8", "--attention", "causal", "--no-progress",
]  # fmt: skip


def machine() -> str:
    import onnxruntime
    import torch

    cpu, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return (
        f"{cpu}, {os.cpu_count()} cores ({', '.join(isa)}), torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def ensure_package(state_dir: Path) -> tuple[Path, str]:
    package = state_dir / "packages" / "serving-bench-top8-causal"
    argv = [CLI, "train", "--state-dir", str(state_dir), *PACKAGE_ARGS, "--out", str(package)]
    if not (package / "package.json").is_file():
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return package, shlex.join(["appliance", *argv[1:]])


def hf_checkpoint(package: Path, state_dir: Path) -> Path:
    """The package merged into its base, saved as a plain Hugging Face checkpoint."""
    target = state_dir / "bench" / f"hf-{package.name}"
    if not (target / "config.json").is_file():
        from appliance.package import load_packaged_model

        loaded, _ = load_packaged_model(package, state_dir)
        loaded.model.save_pretrained(str(target))
        loaded.tokenizer.save_pretrained(str(target))
    return target


def build_notes(tokenizer: Any, count: int, target_tokens: int) -> list[tuple[Note, int]]:
    """(note, token count) pairs: consecutive test sentences joined until ~target_tokens."""
    sentences = read_conll(ROOT / "data" / "bc5cdr" / "test.tsv").notes
    notes: list[tuple[Note, int]] = []
    parts: list[Note] = []
    for sentence in sentences:
        parts.append(sentence)
        text = " ".join(p.text for p in parts)
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens >= target_tokens:
            notes.append((_join(f"note-{len(notes)}", parts), n_tokens))
            parts = []
            if len(notes) == count:
                break
    return notes


def _join(note_id: str, parts: list[Note]) -> Note:
    text, words, entities, at = "", [], [], 0
    for part in parts:
        words += [(s + at, e + at) for s, e in part.words or ()]
        entities += [EntitySpan(e.start + at, e.end + at, e.label) for e in part.entities]
        text += part.text + " "
        at = len(text)
    return Note(note_id, text.rstrip(" "), tuple(entities), tuple(words))


def strict_f1(notes: list[Note], predicted: list[list[tuple[int, int, str]]]) -> float:
    gold = [word_tags(n.words or (), n.entities) for n in notes]
    spans = [[EntitySpan(s, e, label) for s, e, label in p] for p in predicted]
    pred = [word_tags(n.words or (), s) for n, s in zip(notes, spans, strict=True)]
    return entity_scores(gold, pred)["overall"].f1


def run_backend(
    backend: str, package: Path, state_dir: Path, texts: list[str], concurrency: list[int]
) -> dict[str, Any]:
    from serving.client import NerClient

    config = state_dir / "bench" / f"serving-{backend}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[serving]\npackage = "{package}"\nstate_dir = "{state_dir}"\nbackend = "{backend}"\n'
        "port = 0\nworkers = 64\nmax_queue = 1024\ntoken_budget = 1024\nmax_queue_delay_ms = 5.0\n"
    )
    env = {**os.environ, **serving_env()}  # the serving unit's allocator
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip().rsplit(":", 1)[-1]
        with NerClient(f"127.0.0.1:{port}", timeout=3600) as client:
            client.wait_ready(3600)
            client.analyze(texts[0])  # warm-up
            out: dict[str, Any] = {"runs": {}, "entities": []}
            for c in concurrency:
                wall, latencies, responses = _load(client, texts, c)
                out["runs"][str(c)] = {"wall_s": wall, "latencies": latencies}
                if c == concurrency[0]:
                    out["entities"] = [
                        [(e.begin, e.end, e.category) for e in r.entities] for r in responses
                    ]
        out["peak_rss_mb"] = peak_rss_mb(proc.pid)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def _load(client: Any, texts: list[str], c: int) -> tuple[float, list[float], list[Any]]:
    def call(i: int) -> tuple[float, Any]:
        t0 = time.perf_counter()
        response = client.analyze(texts[i], note_id=f"note-{i}")
        return time.perf_counter() - t0, response

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:
        done = list(pool.map(call, range(len(texts))))
    return time.perf_counter() - started, [d[0] for d in done], [d[1] for d in done]


def run_pipeline(model: Path, texts: list[str], concurrency: list[int]) -> dict[str, Any]:
    notes_file = model.parent / "notes.json"
    notes_file.write_text(json.dumps(texts), encoding="utf-8")
    argv = [sys.executable, str(ROOT / "benchmarks" / "serving_pipeline.py"), "--model"]
    argv += [str(model), "--notes", str(notes_file), "--concurrency", *map(str, concurrency)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarize(name: str, raw: dict[str, Any], notes: list[Note], tokens: int) -> dict[str, Any]:
    rows = {}
    for c, run in raw["runs"].items():
        lat = np.array(run["latencies"]) * 1000
        rows[c] = {
            "tokens_per_s": tokens / run["wall_s"],
            "notes_per_s": len(notes) / run["wall_s"],
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }
    f1 = strict_f1(notes, [[tuple(e) for e in note] for note in raw["entities"]])
    return {"system": name, "runs": rows, "peak_rss_mb": raw["peak_rss_mb"], "strict_f1": f1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=64)
    parser.add_argument("--note-tokens", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--backends", nargs="+", default=["onnx-int8", "onnx-int4", "torch-fp32", "torch-nf4"]
    )
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    args = parser.parse_args()
    package, train_command = ensure_package(args.state_dir)
    model = hf_checkpoint(package, args.state_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    pairs = build_notes(tokenizer, args.notes, args.note_tokens)
    notes, tokens = [p[0] for p in pairs], sum(p[1] for p in pairs)
    texts = [n.text for n in notes]
    results = []
    for backend in args.backends:
        print(f"[serving benchmark] {backend}", flush=True)
        raw = run_backend(backend, package, args.state_dir, texts, args.concurrency)
        results.append(summarize(backend, raw, notes, tokens))
    print("[serving benchmark] transformers pipeline (fp32)", flush=True)
    raw = run_pipeline(model, texts, args.concurrency)
    results.append(summarize("transformers-pipeline-fp32", raw, notes, tokens))
    context = {
        "command": "python " + shlex.join(["benchmarks/serving.py", *sys.argv[1:]]),
        "package_command": train_command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "notes": len(notes),
        "note_tokens": tokens,
        "environment": " ".join(f"{k}={v}" for k, v in serving_env().items()),
    }
    from benchmarks.serving_report import write_report

    write_report(RESULTS, context, results)


if __name__ == "__main__":
    main()
