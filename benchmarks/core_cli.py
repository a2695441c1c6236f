"""Headline run through the real CLI: `appliance train` then `appliance evaluate` on BC5CDR.

Writes benchmarks/results/core_cli.md with both commands, their JSON results and wall times.

    .venv/bin/python benchmarks/core_cli.py [--layers top:8] [--epochs 3] [--max-dev-notes 1000]
        [--with-devel N] [--checkpoint FILE] [--out MD]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core import machine  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "core_cli.md"


def run(argv: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default="top:8")
    parser.add_argument("--attention", default="bidirectional-trained")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-dev-notes", type=int, default=1000)
    parser.add_argument(
        "--with-devel",
        type=int,
        default=0,
        metavar="N",
        help="train on train.tsv + devel.tsv, holding out the last N devel sentences as dev",
    )
    parser.add_argument("--state-dir", default=str(Path.home() / ".cache" / "appliance"))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="`appliance train --checkpoint`: a run cut short resumes at its next epoch",
    )
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default {RESULT.name}")
    args = parser.parse_args()
    package = (
        Path(args.state_dir)
        / "packages"
        / f"bc5cdr-{args.layers.replace(':', '')}-{int(time.time())}"
    )
    cli = str(ROOT / ".venv" / "bin" / "appliance")
    if args.with_devel:
        data = [
            "--train",
            "data/bc5cdr/train.tsv",
            "data/bc5cdr/devel.tsv",
            "--dev-split",
            str(args.with_devel),
        ]
    else:
        data = [
            "--train",
            "data/bc5cdr/train.tsv",
            "--dev",
            "data/bc5cdr/devel.tsv",
            "--max-dev-notes",
            str(args.max_dev_notes),
        ]
    train_cmd = [
        cli,
        "train",
        "--state-dir",
        args.state_dir,
        *data,
        "--layers",
        args.layers,
        "--attention",
        args.attention,
        "--epochs",
        str(args.epochs),
        "--out",
        str(package),
        "--no-progress",
        *(["--checkpoint", str(args.checkpoint)] if args.checkpoint else []),
    ]
    eval_cmd = [
        cli,
        "evaluate",
        "--state-dir",
        args.state_dir,
        "--package",
        str(package),
        "--data",
        "data/bc5cdr/test.tsv",
    ]
    trained, train_s = run(train_cmd)
    evaluated, eval_s = run(eval_cmd)
    meta = json.loads((package / "package.json").read_text())
    history = meta["training"]["result"]["history"]
    strict, span = evaluated["entity_strict"], evaluated["span_exact"]
    lines = [
        f"# Headline: `appliance train` + `appliance evaluate`, {args.layers}, full BC5CDR",
        "",
        f"- script: `.venv/bin/python benchmarks/core_cli.py {shlex.join(sys.argv[1:])}`",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- train: `{shlex.join(train_cmd[1:])}` ({train_s / 60:.1f} min wall, incl. model load "
        "and cache build)",
        f"- evaluate: `{shlex.join(eval_cmd[1:])}` ({eval_s / 60:.1f} min wall)",
        "",
        f"{meta['training']['data']['train']['notes']} training sentences "
        f"({' + '.join(Path(p).name for p in meta['training']['data']['train']['path'])}), "
        f"{meta['training']['data']['dev']['notes']} devel sentences held out for early "
        f"stopping, all {evaluated['notes']} test sentences.",
        "",
        "| metric | precision | recall | F1 |",
        "|---|---|---|---|",
    ]
    for name, scores in (
        ("strict entity, overall", strict["overall"]),
        ("strict entity, Chemical", strict["Chemical"]),
        ("strict entity, Disease", strict["Disease"]),
        ("character spans, overall", span["overall"]),
    ):
        lines.append(
            f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} "
            f"| **{scores['f1']:.4f}** |"
        )
    lines += ["", "| epoch | train loss | dev F1 | train s | tokens/s |", "|---|---|---|---|---|"]
    for h in history:
        lines.append(
            f"| {h['epoch']} | {h['loss']:.4f} | {h['dev_f1']:.4f} "
            f"| {h['train_seconds']:.0f} | {h['tokens_per_second']:.0f} |"
        )
    lines += [
        "",
        f"Best epoch {trained['best_epoch']} (dev F1 {trained['best_dev_f1']:.4f}); "
        f"trainable parameters {trained['exchange']['trainable_parameters']:,}; "
        f"{trained['exchange']['exchange_bytes'] / 1e6:.1f} MB per exchange (fp32).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
