"""Fuzz benchmark: hostile and generated notes against the embedded model served with onnx-int8.

    .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--state-dir DIR] [--seed 0]

Serves the serving benchmark's package of the embedded SmolLM2-135M (benchmarks/serving.py,
`ensure_package`) with `appliance serve --backend onnx-int8` in its own process. First the two
extremes are timed alone (a 120,000-character single-word note, a 40,000-emoji note) and the
largest note the server admits, each followed by the server's RSS settling back; then every
hostile class of benchmarks/fuzz_cases.py once, then Hypothesis-generated notes, batches and
streams until `--cases` in all, each judged by benchmarks/fuzz_oracle.py. Tallies status codes,
wall time and the slowest answer per class, and the server's RSS (VmRSS, sampled every 50 ms)
at idle, peak and end. Pass: no INTERNAL (or UNKNOWN/UNAVAILABLE), no oracle violation, each
extreme answered within 30 s, RSS back within 20% of idle. Writes benchmarks/results/fuzz.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import soak_server  # noqa: E402
from benchmarks.fuzz_cases import (  # noqa: E402
    Case,
    clinical_fragments,
    extreme_notes,
    hostile_cases,
)
from benchmarks.fuzz_oracle import Fuzzer, Verdict, health_problems, run_case  # noqa: E402
from benchmarks.fuzz_report import write_report  # noqa: E402
from benchmarks.fuzz_strategies import generated_cases  # noqa: E402
from benchmarks.serving import CLI, ensure_package, machine  # noqa: E402
from benchmarks.soak_server import serving_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BACKEND = "onnx-int8"
ANSWER_WITHIN_S = 30.0
RSS_SLACK = 0.20  # RSS back within 20% of idle
SETTLE_S = 20.0  # how long RSS may take to come back
# Of the generated cases: single notes, batches, streams (a share of them cancelled midway).
MIX = {"generated-analyze": 0.6, "generated-batch": 0.2, "generated-stream": 0.2}


def rss_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MB; 0 when it has gone."""
    return soak_server.rss_mb(pid) or 0.0


class RssSampler:
    """Tracks the peak VmRSS of a process every `period` seconds in a thread."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period, self.peak = pid, period, rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Server:
    pid: int
    target: str
    metrics_url: str


@contextmanager
def serve(package: Path, state_dir: Path) -> Iterator[Server]:
    """`appliance serve` of `package` with onnx-int8 on free ports, drained on exit."""
    config = state_dir / "bench" / f"fuzz-{BACKEND}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[serving]\npackage = "{package}"\nstate_dir = "{state_dir}"\nbackend = "{BACKEND}"\n'
        "port = 0\nmetrics_port = 0\n"
    )
    argv = [CLI, "serve", "--config", str(config)]
    env = {**os.environ, **serving_env()}  # as the serving unit runs it
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        grpc_line, metrics_line = proc.stdout.readline(), proc.stdout.readline()
        if not metrics_line.startswith("metrics on "):
            raise RuntimeError(f"appliance serve did not start: {grpc_line!r} {metrics_line!r}")
        port, metrics = (line.strip().rsplit(":", 1)[-1] for line in (grpc_line, metrics_line))
        yield Server(proc.pid, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=120)


@dataclass
class Tally:
    """Per class: status codes, wall time, slowest answer, oracle violations."""

    cases: Counter[str] = field(default_factory=Counter)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    max_s: dict[str, float] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)  # server RSS after the last case
    problems: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict, wall: float) -> None:
        k = verdict.klass
        self.cases[k] += 1
        self.codes.setdefault(k, Counter()).update(verdict.codes)
        self.wall_s[k] = self.wall_s.get(k, 0.0) + wall
        self.max_s[k] = max(self.max_s.get(k, 0.0), verdict.seconds)
        self.problems += [f"{k}: {p}" for p in verdict.problems]


def timed_case(fz: Fuzzer, pid: int, case: Case, tally: Tally, check_health: bool = True) -> None:
    started = time.perf_counter()
    verdict = run_case(fz, case, check_health)
    tally.add(verdict, time.perf_counter() - started)
    tally.rss_after[case.klass] = rss_mb(pid)


def settle(pid: int, idle: float) -> tuple[float, float]:
    """Wait up to SETTLE_S for RSS to come back within RSS_SLACK of `idle`: (RSS, seconds)."""
    started = time.monotonic()
    rss = rss_mb(pid)
    while rss > idle * (1 + RSS_SLACK) and time.monotonic() - started < SETTLE_S:
        time.sleep(0.2)
        rss = rss_mb(pid)
    return rss, time.monotonic() - started


def largest_note(fz: Fuzzer) -> str:
    """Clinical sentences filling about 90% of max_request_tokens (scaled from a measured note)."""
    from serving.api import ner_pb2

    fragments = clinical_fragments()
    probe = fz.analyze(ner_pb2.AnalyzeRequest(text=" ".join(fragments[:40])))
    per_sentence = probe.reply.token_count / 40
    count = int(0.9 * fz.limits.max_request_tokens / per_sentence)
    return " ".join(fragments[i % len(fragments)] for i in range(count))


def extremes(fz: Fuzzer, server: Server, idle: float) -> list[dict[str, object]]:
    """Each extreme note alone: its status, time, RSS peak and how RSS settles after it."""
    from serving.api import ner_pb2

    notes = {**extreme_notes(), "largest-admitted": largest_note(fz)}
    rows: list[dict[str, object]] = []
    for name, text in notes.items():
        sampler = RssSampler(server.pid)
        req = ner_pb2.AnalyzeRequest(note_id=name, text=text, offset_unit=ner_pb2.OFFSET_UNIT_UTF16)
        verdict = run_case(fz, Case(name, "analyze", (req,)), check_health=False)
        peak = sampler.stop()
        rss, seconds = settle(server.pid, idle)
        rows.append(
            {"name": name, "chars": len(text), "code": verdict.codes[0], "seconds": verdict.seconds}
            | {"peak": peak, "settled": rss, "settle_s": seconds, "problems": verdict.problems}
        )
        print(f"[fuzz] {name}: {verdict.codes[0]} in {verdict.seconds:.2f} s", flush=True)
    return rows


def generated(fz: Fuzzer, pid: int, tally: Tally, klass: str, count: int, seed_value: int) -> None:
    """`count` Hypothesis-generated cases of `klass`; every verdict tallied, none raised."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    kind = klass.removeprefix("generated-")

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(seed_value)
    @given(generated_cases(klass, kind, fz.limits))
    def one(case: Case) -> None:
        timed_case(fz, pid, case, tally, check_health=False)
        if tally.cases[klass] % 500 == 0:
            print(f"[fuzz] {klass}: {tally.cases[klass]} of {count}", flush=True)

    if count:
        one()
    tally.problems += [f"health after {klass}: {p}" for p in health_problems(fz)]


def fuzz(fz: Fuzzer, pid: int, cases: int, seed_value: int) -> Tally:
    tally = Tally()
    corpus = hostile_cases(fz.limits)
    for case in corpus:
        timed_case(fz, pid, case, tally)
    print(f"[fuzz] {len(corpus)} hostile cases done", flush=True)
    left = max(0, cases - len(corpus))
    counts = {k: int(left * share) for k, share in MIX.items()}
    counts["generated-analyze"] += left - sum(counts.values())
    for klass, count in counts.items():
        generated(fz, pid, tally, klass, count, seed_value)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    args = parser.parse_args()
    package, train_command = ensure_package(args.state_dir)
    with serve(package, args.state_dir) as server:
        fz = _ready(server)
        idle = rss_mb(server.pid)
        whole = RssSampler(server.pid)
        started = time.perf_counter()
        rows = extremes(fz, server, idle)
        tally = fuzz(fz, server.pid, args.cases, args.seed)
        wall = time.perf_counter() - started
        peak = whole.stop()
        end, end_s = settle(server.pid, idle)
        fz.close()
    context = {
        "command": "python " + shlex.join(["benchmarks/fuzz.py", *sys.argv[1:]]),
        "package_command": train_command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "backend": BACKEND,
        "wall_s": wall,
        "rss": {"idle": idle, "peak": peak, "end": end, "end_settle_s": end_s},
        "limits": {"answer_s": ANSWER_WITHIN_S, "rss_slack": RSS_SLACK, "settle_s": SETTLE_S},
    }
    path = write_report(RESULTS / "fuzz.md", context, rows, tally)
    print(f"[fuzz] wrote {path}", flush=True)


def _ready(server: Server) -> Fuzzer:
    from serving.client import NerClient

    with NerClient(server.target) as client:
        client.wait_ready(3600)
    return Fuzzer(server.target, server.metrics_url)


if __name__ == "__main__":
    main()
