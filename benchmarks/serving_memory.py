"""Resident memory of `appliance serve` around maximal requests, with and without memory release.

    .venv/bin/python benchmarks/serving_memory.py [--package DIR] [--state-dir DIR]

For each backend and each `release_memory` setting a real `appliance serve` process serves the
package; the script reads its resident memory (/proc/PID/status) when idle after a small note,
right after a maximal request (one note of about `max_request_tokens` model tokens), after three
more maximal requests and 32 concurrent ordinary notes, and its peak (VmHWM). It also sends the
two extreme notes a client can send within the character limit, a 120,000-character word and
40,000 emoji, and records their status and seconds. Writes benchmarks/results/serving_memory.md.
The package defaults to the serving benchmark's (benchmarks/serving.py trains it once).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.serving import CLI, RESULTS, ensure_package, machine  # noqa: E402
from benchmarks.serving_pipeline import peak_rss_mb  # noqa: E402

BACKENDS = ("onnx-int8", "onnx-int4", "torch-fp32")
EXTREMES = {"120,000-character word": "a" * 120_000, "40,000 emoji": "😀" * 40_000}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def test_text(words: int) -> str:
    """About `words` words of BC5CDR test sentences, as one note."""
    lines = (ROOT / "data" / "bc5cdr" / "test.tsv").read_text(encoding="utf-8").splitlines()
    tokens = [line.split("\t")[0] for line in lines if line.strip()]
    return " ".join(tokens[:words])


def _start(backend: str, package: Path, state_dir: Path, release: bool) -> subprocess.Popen[str]:
    config = state_dir / "bench" / f"memory-{backend}-{release}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[serving]\npackage = "{package}"\nstate_dir = "{state_dir}"\nbackend = "{backend}"\n'
        f"port = 0\nworkers = 40\nrelease_memory = {str(release).lower()}\n"
    )
    return subprocess.Popen(
        [CLI, "serve", "--config", str(config)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def _settled_rss(pid: int) -> float:
    time.sleep(2.0)  # the batcher releases memory once its queue is empty
    return rss_mb(pid)


def _extreme(client: Any, text: str) -> tuple[str, float]:
    import grpc

    started = time.perf_counter()
    try:
        client.analyze(text)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    return code, time.perf_counter() - started


def measure(backend: str, package: Path, state_dir: Path, release: bool) -> dict[str, Any]:
    from serving.client import NerClient

    proc = _start(backend, package, state_dir, release)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip().rsplit(":", 1)[-1]
        with NerClient(f"127.0.0.1:{port}", timeout=3600) as client:
            client.wait_ready(3600)
            limit = client.info().limits.max_request_tokens
            client.analyze(test_text(30))
            row: dict[str, Any] = {"idle": _settled_rss(proc.pid)}
            big = test_text(limit)  # words; shortened below until it fits
            while (tokens := _tokens(client, big)) is None:
                big = big[: int(len(big) * 0.9)]
            row["request_tokens"] = tokens
            started = time.perf_counter()
            client.analyze(big)
            row["maximal_s"] = time.perf_counter() - started
            row["after_one"] = _settled_rss(proc.pid)
            for _ in range(3):
                client.analyze(big)
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda i: client.analyze(test_text(200 + i)), range(32)))
            row["after_more"] = _settled_rss(proc.pid)
            for name, text in EXTREMES.items():
                row[name] = _extreme(client, text)
            row["after_extremes"] = _settled_rss(proc.pid)
        row["peak"] = peak_rss_mb(proc.pid)
        return row
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def _tokens(client: Any, text: str) -> int | None:
    """The note's model tokens when it fits max_request_tokens, else None."""
    import grpc

    try:
        return int(client.analyze(text).token_count)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return None


def report(rows: dict[tuple[str, bool], dict[str, Any]], command: str, package_cmd: str) -> str:
    lines = [
        "# Serving memory around maximal requests",
        "",
        f"- Command: `{command}`",
        f"- Package: `{package_cmd}`",
        f"- Machine: {machine()}",
        f"- Date: {dt.date.today().isoformat()}",
        "- RSS in MB of the `appliance serve` process, read 2 s after each step (the batcher gives",
        "  memory back once its queue is empty when `release_memory` is on).",
        "",
        "| backend | release_memory | idle | after 1 maximal | after 3 more + 32 notes "
        "| after extremes | peak | growth after | maximal request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (backend, release), r in rows.items():
        growth = (max(r["after_one"], r["after_more"], r["after_extremes"]) / r["idle"] - 1) * 100
        lines.append(
            f"| {backend} | {'on' if release else 'off'} | {r['idle']:.0f} | {r['after_one']:.0f} "
            f"| {r['after_more']:.0f} | {r['after_extremes']:.0f} | {r['peak']:.0f} "
            f"| {growth:+.1f}% | {r['request_tokens']} tokens, {r['maximal_s']:.1f} s |"
        )
    lines += ["", "Extreme notes (status, seconds):", ""]
    lines += ["| backend | release_memory | " + " | ".join(EXTREMES) + " |", "|---|---|---|---|"]
    for (backend, release), r in rows.items():
        cells = " | ".join(f"{r[n][0]}, {r[n][1]:.2f} s" for n in EXTREMES)
        lines.append(f"| {backend} | {'on' if release else 'off'} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="default: the serving benchmark's package")
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--out", type=Path, default=RESULTS / "serving_memory.md")
    args = parser.parse_args()
    if args.package is None:
        args.package, package_cmd = ensure_package(args.state_dir)
    else:
        package_cmd = f"given: {args.package}"
    rows = {}
    for backend in args.backends:
        for release in (True, False):
            rows[(backend, release)] = measure(backend, args.package, args.state_dir, release)
            print(backend, release, rows[(backend, release)], flush=True)
    command = shlex.join(["python", "benchmarks/serving_memory.py", *sys.argv[1:]])
    args.out.write_text(report(rows, command, package_cmd), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
