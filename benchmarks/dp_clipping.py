"""Memory and seconds of a DP-SGD round by clipping: per-sample gradients against ghost clipping.

Each row is a fresh process on one thread: a hospital node (federation.task.HospitalNode) loads
the base, trains round 1 of DP-SGD (noise calibrated to epsilon 8 over 10 rounds) on the first
`--notes` BC5CDR training sentences, in one Poisson batch of them, `micro` windows at a time,
and the process's anonymous memory peak is sampled from /proc (benchmarks.tree_memory). `flat`
is Opacus' GradSampleModule: it stores every window's gradient of every trained weight for
the micro-batch; `ghost` (dp-clipping ghost) takes the norms from the layers' inputs and output
gradients and clips by a second backward pass, storing none. Round 1 also builds the frozen
prefix's cache (the same for every row). Writes results/dp_clipping.md (or --out):

    .venv/bin/python benchmarks/dp_clipping.py [--base embedded|DIR] [--notes 256]
        [--rows layers:flat:32 layers:ghost:32 lora:flat:32 lora:ghost:32] [--out MD]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scale import PY, measured  # noqa: E402
from benchmarks.serving import machine  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "dp_clipping.md"
TRAIN = ROOT / "data" / "bc5cdr" / "train.tsv"
ROWS = ["layers:flat:32", "layers:ghost:32", "lora:flat:32", "lora:ghost:32"]


def child(base: str, row: str, notes_count: int, state_dir: Path, work: Path) -> dict:
    """One DP round of `row` (mode:clipping:micro) in this process; its seconds and metrics."""
    import torch

    from appliance.readers import read_notes
    from federation.config import FederationConfig
    from federation.task import HospitalNode

    torch.set_num_threads(1)
    # the out-of-memory killer's first choice: a row that cannot fit fails alone
    Path("/proc/self/oom_score_adj").write_text("1000")
    mode, clipping, micro = row.split(":")
    notes = read_notes(str(TRAIN)).notes[:notes_count]
    cfg = FederationConfig(base=base, mode=mode, dp=True, dp_clipping=clipping,
                           micro_batch_size=int(micro), batch_size=notes_count)  # fmt: skip
    node = HospitalNode.load(cfg, notes, work, "h", bases_dir=state_dir)
    trained = sum(p.numel() for p in node.loaded.model.parameters() if p.requires_grad)
    started = time.perf_counter()
    update = node.train_round(node.initial_arrays(), 1)
    if update.declined is not None:
        raise SystemExit(f"{row}: the round was declined: {update.declined}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "trained": trained,
        "epsilon": float(update.metrics["eps_spent"]),
        "clipped": float(update.metrics["dp_clipped_share"]),
    }


def available_gib() -> str:
    """The machine's memory now (a row killed for memory is killed at what others left it)."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(info[k].split()[0]) / 2**20 for k in ("MemTotal", "MemAvailable"))
    return f"memory available at the start {available:.1f} of {total:.1f} GiB"


def row_line(row: str, result: dict | None, anon_mb: float, failure: str) -> str:
    mode, clipping, micro = row.split(":")
    if result is None:  # the peak a failed row reached before it ended
        return f"| {mode} | {clipping} | {micro} | - | {anon_mb / 1024:.2f} | - | - | {failure} |"
    return (
        f"| {mode} | {clipping} | {micro} | {result['trained']:,} | {anon_mb / 1024:.2f} "
        f"| {result['seconds']:.0f} | {result['epsilon']:.2f} | {result['clipped']:.0%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="embedded")
    parser.add_argument("--notes", type=int, default=256)
    parser.add_argument("--rows", nargs="+", default=ROWS, help="mode:clipping:micro-batch")
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--timeout", type=float, default=5400.0, help="seconds per row")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.base, args.child, args.notes, args.state_dir, args.work)))
        return
    lines = [
        "# A DP-SGD round's memory by clipping: per-sample gradients (flat) against ghost",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/dp_clipping.py', *sys.argv[1:]])}`",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- base: {args.base}; {args.notes} BC5CDR training sentences in one Poisson batch; "
        f"load average (1 min) at the start: {os.getloadavg()[0]:.1f}; {available_gib()}",
        "",
        "Peak anonymous memory of the node's process (loading, the frozen prefix's cache, the "
        "round); seconds of the round alone. Both clippings take the same clipped, noised step "
        "(tests/federation/test_privacy.py checks it); ghost runs a second backward pass.",
        "",
        "| mode | clipping | micro-batch | trained weights | peak anon GiB | round s | epsilon "
        "| clipped share (or why it failed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="dp-clipping-") as scratch:
        for index, row in enumerate(args.rows):
            argv = [PY, __file__, "--child", row, "--base", args.base, "--notes", str(args.notes),
                    "--state-dir", str(args.state_dir), "--work", f"{scratch}/{index}"]  # fmt: skip
            run = measured(argv, args.timeout)
            result = json.loads(run.stdout.strip().splitlines()[-1]) if run.code == 0 else None
            why = "killed (out of memory)" if run.code in (-9, 137) else run.tail[-300:]
            lines.append(row_line(row, result, run.anon_mb, f"exit {run.code}: {why}"))
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
