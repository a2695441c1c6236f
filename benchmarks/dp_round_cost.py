"""What a DP-SGD round costs against the same round without DP, at the demo's recipe.

One node of the demo's consortium (the embedded model, LoRA r16 on top:8, batch 256, the first
`--windows` BC5CDR training sentences) trains round 1 (which also builds the frozen prefix's
cache) and then round 2, once without DP and once with DP-SGD (each round's noise calibrated to
epsilon 8 over 10 rounds). A DP round takes `ceil(windows / 256)` Poisson steps of an expected
256 windows each, so below 256 windows it is one step over all of them, and at 300 windows it
samples 512 (1.7 times the windows); Opacus' per-sample gradients add to each micro-batch.
Both runs are in one process, side by side, one thread. Writes results/dp_round_cost.md:

    .venv/bin/python benchmarks/dp_round_cost.py [--windows 150 300]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.readers import read_notes  # noqa: E402
from benchmarks.core import machine  # noqa: E402
from demo.plan import make_plan  # noqa: E402
from federation.privacy import DPSGDPolicy  # noqa: E402
from federation.task import HospitalNode  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "dp_round_cost.md"


def rounds(windows: int, dp: bool, state: Path, bases: Path) -> tuple[float, float, int]:
    """(round 1 seconds, round 2 seconds, windows sampled per round) for one node."""
    notes = read_notes(str(ROOT / "data" / "bc5cdr" / "train.tsv")).notes[:windows]
    cfg = replace(make_plan(quick=False, dp=dp).federation, warm_start="")
    node = HospitalNode.load(cfg, notes, state / f"{windows}-{dp}", "h", bases_dir=bases)
    arrays = node.initial_arrays()
    seconds = []
    for server_round in (1, 2):
        started = time.perf_counter()
        node.train_round(arrays, server_round)
        seconds.append(time.perf_counter() - started)
    rate, steps = DPSGDPolicy.planned(node.windows, cfg.batch_size, cfg.local_epochs)
    sampled = round(rate * steps * node.windows) if dp else node.windows
    return seconds[0], seconds[1], sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", nargs="+", type=int, default=[150, 300])
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# A DP-SGD round against the same round without DP (the demo's recipe, one node)",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/dp_round_cost.py', *sys.argv[1:]])}`",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- load average (1 min) at the start: {os.getloadavg()[0]:.1f} (other processes "
        "share the cores when it is above 1)",
        "",
        "Round 1 includes building the frozen prefix's cache; round 2 is training alone. "
        "Compare the ratios, measured side by side in one process.",
        "",
        "| windows | DP | windows sampled per round | round 1 s | round 2 s | round 2 / no DP |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="dp-round-") as scratch:
        for windows in args.windows:
            plain = rounds(windows, False, Path(scratch), args.state_dir)
            private = rounds(windows, True, Path(scratch), args.state_dir)
            for dp, (first, second, sampled) in ((False, plain), (True, private)):
                lines.append(
                    f"| {windows} | {'yes' if dp else 'no'} | {sampled} | {first:.1f} "
                    f"| {second:.1f} | {second / plain[1]:.2f} |"
                )
            print(lines[-2], lines[-1], sep="\n", flush=True)
    RESULT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULT}", flush=True)


if __name__ == "__main__":
    main()
