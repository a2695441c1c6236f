"""Padding benchmark: a note's windows as one padded batch vs grouped by length (what we serve).

    .venv/bin/python benchmarks/serving_padding.py [--notes 24] \
        [--backends onnx-int4 onnx-int8 torch-fp32] [--state-dir DIR]

The serving benchmark's package and notes (~500 tokens, consecutive BC5CDR test sentences) are
cut into the windows `appliance serve` uses; each note's windows are then run the two ways, one
after the other, note by note (as the server runs a lone request): "one batch" pads every window
to the longest, the way our batcher did before 2026-11-25; "length groups" is
`serving.batching.infer_grouped`, which the batcher uses now. tokens/s counts the notes' own
tokens. Also reported: model tokens computed per note token with padding, and the largest
difference between the two ways' log-probabilities. Writes benchmarks/results/serving_padding.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.serving import build_notes, ensure_package, machine  # noqa: E402
from serving.batching import infer_grouped  # noqa: E402
from serving.config import ServingConfig  # noqa: E402
from serving.engine import ServedModel, load_served_model  # noqa: E402

BUDGET = ServingConfig.token_budget


def measure(model: ServedModel, notes: list[Any]) -> dict[str, float]:
    per_note = [model.encode([note]) for note, _ in notes]
    run_all = model.backend.log_probs
    run_all(per_note[0])
    infer_grouped(model.backend, per_note[0], BUDGET)  # warm-up, both ways
    seconds = {"one batch": 0.0, "length groups": 0.0}
    padded = {"one batch": 0, "length groups": 0}
    diff = 0.0

    def count(batch: Sequence[Any]) -> None:  # the groups as they ran: padded to their longest
        padded["length groups"] += len(batch) * max(len(w) for w in batch)

    for windows in per_note:
        t0 = time.perf_counter()
        whole = run_all(windows)
        t1 = time.perf_counter()
        grouped = infer_grouped(model.backend, windows, BUDGET, count)
        t2 = time.perf_counter()
        seconds["one batch"] += t1 - t0
        seconds["length groups"] += t2 - t1
        padded["one batch"] += len(windows) * max(len(w) for w in windows)
        diff = max(diff, *(float(np.abs(a - b).max()) for a, b in zip(whole, grouped, strict=True)))
    tokens = sum(n for _, n in notes)
    out = {f"{k} tokens/s": tokens / v for k, v in seconds.items()}
    out |= {f"{k} padded per note token": v / tokens for k, v in padded.items()}
    out["speedup"] = seconds["one batch"] / seconds["length groups"]
    out["max |log-prob difference|"] = diff
    return out


def render(args: argparse.Namespace, rows: dict[str, dict[str, float]], tokens: int) -> str:
    argv = " ".join(sys.argv[1:])
    lines = [
        "# Serving: padded batch vs length groups",
        "",
        f"Command: `python benchmarks/serving_padding.py {argv}`  ",
        f"Machine: {machine()}  ",
        f"Date: {date.today().isoformat()}",
        "",
        f"{args.notes} notes of about 500 tokens ({tokens} tokens in all), the serving benchmark's"
        " package and windows; each note's windows run as one padded batch and as length groups"
        " (`serving.batching.infer_grouped`, what `appliance serve` does), one after the other,"
        " note by note; the backends one after the other in one process. `onnx-int8` quantizes"
        " activations with one scale per batch tensor, padding included, so its log-probs depend"
        " on which windows share a batch; the other backends' differ only by float rounding.",
        "",
        "| backend | one batch tokens/s | length groups tokens/s | speedup | model tokens per note "
        "token, one batch / groups | max \\|Δ log-prob\\| |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['one batch tokens/s']:.0f} | {r['length groups tokens/s']:.0f} | "
            f"{r['speedup']:.2f}x | {r['one batch padded per note token']:.2f} / "
            f"{r['length groups padded per note token']:.2f} | "
            f"{r['max |log-prob difference|']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=24)
    parser.add_argument("--backends", nargs="+", default=["onnx-int4", "onnx-int8", "torch-fp32"])
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    args = parser.parse_args()
    package, _ = ensure_package(args.state_dir)
    rows: dict[str, dict[str, float]] = {}
    tokens = 0
    for name in args.backends:
        config = ServingConfig(package=package, state_dir=args.state_dir, backend=name)
        model = load_served_model(config, package, "bench")
        notes = build_notes(model.backend.tokenizer, args.notes, 500)
        tokens = sum(n for _, n in notes)
        print(f"[padding benchmark] {name}", file=sys.stderr)
        rows[name] = measure(model, notes)
        model.backend.close()
    out = ROOT / "benchmarks" / "results" / "serving_padding.md"
    out.write_text(render(args, rows, tokens), encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
