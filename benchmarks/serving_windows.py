"""Batched windows vs one window per model run, under load (many notes' windows at once).

    .venv/bin/python benchmarks/serving_windows.py [--notes 40] [--backends onnx-int8 onnx-int4]

The serving benchmark's package and notes (~500 tokens, consecutive BC5CDR test sentences) are cut
into the windows `appliance serve` uses. All notes' windows are then scored twice, the backends
one after the other in one process: "batched" groups them by length under the server's token
budget (`serving.batching.infer_grouped` over ONNX Runtime's batched session run, what a loaded
server did before onnx-int8 ran windows alone), "alone" runs one window per session run. Reported:
note tokens/s both ways, and the words whose predicted tag differs between the two (a note whose
answer depends on the traffic around it). Writes benchmarks/results/serving_windows.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.serving import build_notes, ensure_package, machine  # noqa: E402
from serving.backends.onnx_int4 import OnnxInt4Backend  # noqa: E402
from serving.batching import infer_grouped  # noqa: E402
from serving.config import ServingConfig  # noqa: E402
from serving.engine import load_served_model  # noqa: E402

BUDGET = ServingConfig.token_budget
Runner = Callable[[Sequence[Any]], list[np.ndarray]]


def timed(run: Runner, windows: Sequence[Any]) -> tuple[float, list[np.ndarray]]:
    started = time.perf_counter()
    out = run(windows)
    return time.perf_counter() - started, out


def measure(backend: Any, windows: Sequence[Any], tokens: int, repeats: int) -> dict[str, Any]:
    batched_run = OnnxInt4Backend.log_probs  # the batched session run both ONNX backends share

    class Batched:
        @staticmethod
        def log_probs(batch: Sequence[Any]) -> list[np.ndarray]:
            return batched_run(backend, batch)

    def batched(ws: Sequence[Any]) -> list[np.ndarray]:
        return infer_grouped(Batched, ws, BUDGET)  # type: ignore[arg-type]

    def alone(ws: Sequence[Any]) -> list[np.ndarray]:
        return [batched_run(backend, [w])[0] for w in ws]

    alone(windows[:2])  # warm-up
    seconds: dict[str, list[float]] = {"batched": [], "alone": []}
    outs: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):  # interleaved, so drift of the box hits both ways alike
        for name, run in (("batched", batched), ("alone", alone)):
            s, outs[name] = timed(run, windows)
            seconds[name].append(s)
    words = sum(len(a) for a in outs["alone"])
    flips = sum(
        int((a.argmax(1) != b.argmax(1)).sum())
        for a, b in zip(outs["alone"], outs["batched"], strict=True)
    )
    return {
        "batched": tokens / min(seconds["batched"]),
        "alone": tokens / min(seconds["alone"]),
        "words": words,
        "flips": flips,
    }


def render(args: argparse.Namespace, rows: dict[str, dict[str, Any]], shape: str) -> str:
    lines = [
        "# Serving: batched windows vs one window per model run",
        "",
        f"Command: `python benchmarks/serving_windows.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"{shape}; all windows scored at once, batched by length under the token budget "
        f"({BUDGET}) or one window per session run; best of {args.repeats} interleaved repeats. "
        "A flipped word has another predicted tag batched than alone.",
        "",
        "| backend | batched tokens/s | alone tokens/s | alone / batched | words | flipped words |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['batched']:.0f} | {r['alone']:.0f} | {r['alone'] / r['batched']:.2f}x"
            f" | {r['words']} | {r['flips']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["onnx-int8", "onnx-int4"])
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving_windows.md")
    args = parser.parse_args()
    package, _ = ensure_package(args.state_dir)
    rows: dict[str, dict[str, Any]] = {}
    shape = ""
    for name in args.backends:
        config = ServingConfig(package=package, state_dir=args.state_dir, backend=name)
        model = load_served_model(config, package, "bench")
        notes = build_notes(model.backend.tokenizer, args.notes, 500)
        windows = model.encode([note for note, _ in notes])
        tokens = sum(n for _, n in notes)
        shape = f"{len(notes)} notes of about 500 tokens ({tokens} tokens, {len(windows)} windows)"
        print(f"[windows benchmark] {name}", file=sys.stderr)
        rows[name] = measure(model.backend, windows, tokens, args.repeats)
        model.backend.close()
    args.out.write_text(render(args, rows, shape), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
