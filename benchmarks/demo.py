"""How long the README's main job takes: `python -m demo`, end to end, phase by phase.

Runs the demo as the README does (a fresh state dir unless --state-dir: the base is
materialized from the GGUF as on a first run), reads the `[demo mm:ss]` lines it prints, and
writes benchmarks/results/demo.md: the time to each milestone (SuperNodes online, each round's
last promotion, the EHR call, the end), the held-out F1 per round, and the entities the sample
note's gRPC call found. Run from the repository root on an otherwise idle machine:

    .venv/bin/python benchmarks/demo.py [--rounds N] [--backend B] [--state-dir DIR] [--out MD]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core import machine  # noqa: E402
from federation.journal import read_journal  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "demo.md"
STAMP = re.compile(r"^\[demo (\d+):(\d\d)\] (.*)$")
ENTITY = re.compile(r"^  \[\s*\d+,\s*\d+\)  (\S+)\s+([\d.]+)  (.*)$")
MILESTONES = (
    ("SuperNodes online", re.compile(r"SuperNodes online")),
    ("base ready", re.compile(r"^base ready")),
    *(
        (f"round {r} promoted or kept at every box", re.compile(rf"^round {r} .*held-out notes"))
        for r in range(1, 11)
    ),
    ("sample note sent over gRPC", re.compile(r"sends a sample note")),
    ("done", re.compile(r"^done in")),
)


def milestones(lines: list[str]) -> list[tuple[str, int]]:
    """(milestone, seconds since the demo started): the last line matching each milestone."""
    seen: dict[str, int] = {}
    for line in lines:
        stamp = STAMP.match(line)
        if not stamp:
            continue
        seconds = int(stamp.group(1)) * 60 + int(stamp.group(2))
        for name, pattern in MILESTONES:
            if pattern.search(stamp.group(3)):
                seen[name] = seconds
    return [(name, seen[name]) for name, _ in MILESTONES if name in seen]


def phases(work: Path, started: float) -> list[str]:
    """Per round, from the boxes' round journals: when the first box started training, when the
    last one sent its update, when the last one had promoted (or kept) the global model."""
    events: dict[int, dict[str, list[float]]] = {}
    for journal in sorted(work.glob("*/federation/journal.jsonl")):
        for entry in read_journal(journal):
            server_round = int(entry.fields.get("server_round") or 0)
            at = dt.datetime.fromisoformat(entry.time).timestamp() - started
            events.setdefault(server_round, {}).setdefault(entry.event, []).append(at)
    rows = []
    for r in sorted(k for k in events if k):
        got = events[r]
        start = min(got.get("round_started", [float("nan")]))
        sent = max(got.get("round_completed", [float("nan")]))
        promoted = max(got.get("promotion", [float("nan")]))
        rows.append(f"| {r} | {start:.0f} | {sent:.0f} ({sent - start:.0f}) | "
                    f"{promoted:.0f} ({promoted - sent:.0f}) |")  # fmt: skip
    return [
        "| round | first box starts training (s) | last update sent (s; training) "
        "| last promotion decided (s; aggregation, scoring, packaging) |",
        "|---|---|---|---|",
        *rows,
    ]


def privacy(summary: dict) -> list[str]:
    """Each box's epsilon spent after each round (none: DP-SGD was off)."""
    spent = summary.get("epsilon_by_round") or {}
    if not spent:
        return ["No privacy spent: DP-SGD was off.", ""]
    names = sorted({name for row in spent.values() for name in row})
    return [
        f"| round | {' | '.join(f'epsilon spent, {n}' for n in names)} |",
        "|---|" + "---|" * len(names),
        *(
            f"| {r} | {' | '.join(f'{row[n]:.2f}' if n in row else '-' for n in names)} |"
            for r, row in sorted(spent.items(), key=lambda kv: int(kv[0]))
        ),
        "",
    ]


def render(command: str, wall: float, lines: list[str], summary: dict, phased: list[str]) -> str:
    entities = [m.groups() for line in lines if (m := ENTITY.match(line))]
    labels = Counter(label for label, _, _ in entities)
    out = [
        "# The main job's time: `python -m demo`",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- wall: **{wall / 60:.1f} min** (the demo's clock: {summary['seconds'] / 60:.1f} min)",
        "",
        "| milestone | at (mm:ss) |",
        "|---|---|",
        *(f"| {name} | {s // 60:02d}:{s % 60:02d} |" for name, s in milestones(lines)),
        "",
        *phased,
        "",
        "| round | mean held-out F1 | MB moved |",
        "|---|---|---|",
        *(
            f"| {r['round']} | {r['mean_f1']:.3f} | {r['bytes'] / 1e6:.1f} |"
            for r in summary["rounds"]
        ),
        "",
        *privacy(summary),
        f"The sample note's gRPC call found {len(entities)} entities "
        f"({', '.join(f'{k} {v}' for k, v in sorted(labels.items())) or 'none'}):",
        "",
        *(f"- {label} {score}: {text}" for label, score, text in entities),
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="the demo's --rounds (default: its own)")
    parser.add_argument("--backend", help="the demo's --backend (default: its own)")
    parser.add_argument("--state-dir", type=Path, help="default: a fresh temporary folder")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as scratch:
        state = args.state_dir or Path(scratch) / "state"
        work = Path(scratch) / "demo"
        argv = ["-m", "demo", "--state-dir", str(state), "--workdir", str(work), "--keep"]
        argv += ["--rounds", str(args.rounds)] if args.rounds else []
        argv += ["--backend", args.backend] if args.backend else []
        started, epoch = time.monotonic(), time.time()
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                              check=False)  # fmt: skip
        wall = time.monotonic() - started
        lines = done.stdout.splitlines()
        print(done.stdout, flush=True)
        if done.returncode != 0:
            raise SystemExit(f"the demo failed ({done.returncode}): {done.stderr[-2000:]}")
        summary = json.loads((work / "summary.json").read_text(encoding="utf-8"))
        phased = phases(work, epoch)
    shown = ["python", *argv[:2], *(["--rounds", str(args.rounds)] if args.rounds else [])]
    shown += ["--backend", args.backend] if args.backend else []
    args.out.write_text(render(shlex.join(shown), wall, lines, summary, phased), encoding="utf-8")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
