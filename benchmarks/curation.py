"""The curation API under load, and the note store's size on disk.

    .venv/bin/python benchmarks/curation.py [--clients 32] [--seconds 60] [--state-dir DIR]

1. Sustained submits: `appliance serve` in its own process (the serving benchmark's `top:8`
   package of the embedded model on onnx-int8, a note store in a fresh folder, plaintext on
   loopback), `--clients` client threads each submitting BC5CDR training sentences with their
   gold entities as new notes (kind corrected) for `--seconds`; every answer is durable before
   it is sent (synchronous=FULL), so this measures the store's fsync-bound write path through
   gRPC. Submits per second, latency percentiles, errors by status.
2. Size: 10,000 notes written straight into a fresh store, as BC5CDR sentences (about 150
   characters) and as notes of about 2,000 characters (sentences joined), bytes of the database
   and its write-ahead log after a checkpoint.
Writes benchmarks/results/curation.md (and curation.json beside it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from appliance.annotations import Annotation  # noqa: E402
from appliance.note_store import NoteStore  # noqa: E402
from appliance.notes import EntitySpan, Note  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from benchmarks.serving import CLI, ensure_package, machine  # noqa: E402
from serving.client import NerClient  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TRAIN = ROOT / "data" / "bc5cdr" / "train.tsv"


def _serve(package: Path, state_dir: Path, store: Path) -> tuple[subprocess.Popen[str], int]:
    config = store.parent / "serving.toml"
    config.write_text(
        f'[serving]\npackage = "{package}"\nstate_dir = "{state_dir}"\nbackend = "onnx-int8"\n'
        f'port = 0\nworkers = 64\nnote_store = "{store}"\n'
    )
    proc = subprocess.Popen([CLI, "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().strip().rsplit(":", 1)[-1])


def _submitter(
    port: int, notes: list[Note], worker: int, until: float, out: dict[str, Any]
) -> None:
    latencies, codes = [], Counter[str]()
    with NerClient(f"127.0.0.1:{port}", timeout=60) as client:
        i = 0
        while time.monotonic() < until:
            note = notes[(worker * 7919 + i) % len(notes)]
            spans = [(e.start, e.end, e.label) for e in note.entities]
            started = time.perf_counter()
            try:
                client.submit_annotation(f"w{worker}-{i}", 1, note.text, spans, f"coder-{worker}")
                codes["OK"] += 1
            except grpc.RpcError as err:
                codes[err.code().name] += 1
            latencies.append(time.perf_counter() - started)
            i += 1
    out[str(worker)] = {"latencies": latencies, "codes": dict(codes)}


def sustained(notes: list[Note], clients: int, seconds: float, state_dir: Path) -> dict[str, Any]:
    package, _ = ensure_package(state_dir)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "notes.sqlite"
        proc, port = _serve(package, state_dir, store)
        try:
            with NerClient(f"127.0.0.1:{port}", timeout=600) as client:
                client.wait_ready(600)
            out: dict[str, Any] = {}
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=_submitter, args=(port, notes, w, until, out))
                for w in range(clients)
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        with NoteStore(store) as opened:
            stored = opened.stats().notes
    latencies = sorted(x for w in out.values() for x in w["latencies"])
    codes = sum((Counter(w["codes"]) for w in out.values()), Counter[str]())
    return {
        "clients": clients,
        "wall_s": wall,
        "submits": len(latencies),
        "per_s": codes["OK"] / wall,
        "codes": dict(codes),
        "stored": stored,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def store_size(notes: list[Note], count: int, joined: int) -> dict[str, Any]:
    """Bytes on disk of `count` notes, each `joined` sentences long."""
    with tempfile.TemporaryDirectory() as tmp, NoteStore(Path(tmp) / "n.sqlite") as store:
        chars = 0
        for i in range(count):
            parts = [notes[(i * joined + k) % len(notes)] for k in range(joined)]
            text, spans = "", []
            for part in parts:
                offset = len(text) + (1 if text else 0)
                text = f"{text} {part.text}" if text else part.text
                spans += [(e.start + offset, e.end + offset, e.label) for e in part.entities]
            chars += len(text)
            entities = tuple(EntitySpan(s, e, label) for s, e, label in spans)
            store.submit(Annotation(f"n{i}", 1, text, entities, "coder", "corrected"), "bench")
        store.checkpoint()
        return {"notes": count, "mean_chars": chars / count, "bytes": store.stats().bytes_on_disk}


def write_report(path: Path, r: dict[str, Any]) -> None:
    s = r["sustained"]
    lines = [
        "# The curation API under load, and the note store's size",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}  ",
        f"Date: {r['date']}",
        "",
        "## Sustained submits (gRPC, durable before the answer)",
        "",
        f"`appliance serve` (onnx-int8, a note store on this machine's disk) and {s['clients']} "
        f"client threads in another process, each submitting new notes (BC5CDR training "
        f"sentences with their gold entities, kind corrected) for {s['wall_s']:.0f} s.",
        "",
        "| clients | submits/s | p50 ms | p99 ms | answers by status | notes in the store |",
        "|---|---|---|---|---|---|",
        f"| {s['clients']} | {s['per_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
        f"{', '.join(f'{k} {v}' for k, v in sorted(s['codes'].items()))} | {s['stored']} |",
        "",
        "## Size on disk (database and write-ahead log, after a checkpoint)",
        "",
        "| notes | mean characters a note | bytes | per 10,000 notes |",
        "|---|---|---|---|",
    ]
    for row in r["sizes"]:
        per = row["bytes"] / row["notes"] * 10_000 / 1e6
        count, chars, size = row["notes"], row["mean_chars"], row["bytes"]
        lines.append(f"| {count:,} | {chars:,.0f} | {size:,} | {per:.1f} MB |")
    if r.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in r["notes"])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _measured_args(argv: list[str]) -> list[str]:
    """The command line without its --note annotations."""
    out, skip = [], False
    for arg in argv:
        if skip or arg == "--note":
            skip = not skip
            continue
        out.append(arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--out", type=Path, default=RESULTS / "curation.md")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    notes = [n for n in read_notes(TRAIN).notes if n.entities]
    record = {
        "command": shlex.join(["python", "benchmarks/curation.py", *_measured_args(sys.argv[1:])]),
        "machine": machine(),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "sustained": sustained(notes, args.clients, args.seconds, args.state_dir),
        "sizes": [store_size(notes, 10_000, 1), store_size(notes, 10_000, 14)],
        "notes": args.note,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    write_report(args.out, record)
    print(args.out)


if __name__ == "__main__":
    main()
