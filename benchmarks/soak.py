"""Soak and fault benchmark of NER serving: hot swaps, a kill -9, hostile notes, a nightly run.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 32] [--compare-minutes 2] \
        [--state-dir DIR]

`appliance serve` (onnx-int8, the embedded SmolLM2-135M) follows a model registry's `current`,
as a real process under a supervisor that restarts it one second after it dies (systemd's
Restart=always, RestartSec=1). Client threads send BC5CDR test notes of 100-2,000 tokens and 5%
hostile notes (the fuzz corpus's classes) for --minutes; new registry versions (the head
perturbed, exported to ONNX before the load) are promoted at 25/50/75% and the server is killed
with SIGKILL at 40%. Clients retry UNAVAILABLE (and RESOURCE_EXHAUSTED "retry later") with
backoff and wait_for_ready. Then the same load runs for --compare-minutes on the idle box and
again beside `appliance train` at nice 19. Writes benchmarks/results/soak.md (--save-record
keeps the raw records; --from-record rewrites the report from them without running anything).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.registry import ModelRegistry  # noqa: E402
from benchmarks.fuzz_cases import Limits  # noqa: E402
from benchmarks.soak_analysis import Phase, SoakRecord  # noqa: E402
from benchmarks.soak_load import LoadSpec, clinical_items, hostile_items, run_load  # noqa: E402
from benchmarks.soak_models import (  # noqa: E402
    CLI,
    Version,
    fresh_registry,
    prepare_exports,
    versions,
)
from benchmarks.soak_report import machine, write_report  # noqa: E402
from benchmarks.soak_server import Sampler, Supervisor, cpu_seconds, serving_env  # noqa: E402
from serving.client import NerClient  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
Event = tuple[float, Callable[[], None]]  # (seconds into the soak, what happens then)
NOTE_TOKENS = (100, 200, 400, 700, 1000, 1400, 2000)  # packed note sizes, model tokens
# The nightly job's stand-in: training of the selected layers on BC5CDR at nice 19 (systemd gives
# the federation service CPUWeight=50 against serving's 1000; nice 19 weighs 15 against 1024).
NIGHTLY_ARGS = [
    "--train", "data/bc5cdr/train.tsv", "--layers", "top:8", "--attention", "causal",
    "--epochs", "1", "--no-cache", "--no-progress",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, registry: Path, args: argparse.Namespace) -> tuple[Path, str, str]:
    """The serving TOML (fixed ports, so a restarted process is found where it was)."""
    port, metrics_port = free_port(), free_port()
    config = folder / "serving.toml"
    config.write_text(
        f'[serving]\nregistry = "{registry}"\nbackend = "{args.backend}"\n'
        f'state_dir = "{args.state_dir}"\nport = {port}\nmetrics_port = {metrics_port}\n',
        encoding="utf-8",
    )
    return config, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"


class Faults:
    """The soak's scheduled events: promote the next version, kill the server; when each ran."""

    def __init__(self, registry: ModelRegistry, pending: list[Version], spec: LoadSpec) -> None:
        self.registry = registry
        self.pending = list(pending)
        self.spec = spec
        self.promotions: list[tuple[str, float]] = []  # (registry version, monotonic time)
        self.kills: list[tuple[int, float]] = []  # (pid, monotonic time)

    def promote_next(self) -> None:
        version = self.pending.pop(0)
        slot = self.registry.publish(version.package, version.label, "soak: hot swap")
        self.spec.versions.add(slot.version)
        self.registry.promote(slot.version, "soak: hot swap")
        self.promotions.append((slot.version, time.monotonic()))

    def kill(self, supervisor: Supervisor) -> None:
        self.kills.append(supervisor.kill())


@dataclass
class Server:
    """The supervised serving process, its registry and sampler, and what GetInfo said."""

    registry: ModelRegistry
    target: str
    supervisor: Supervisor
    sampler: Sampler
    limits: Limits
    command: str


def start_server(args: argparse.Namespace, first: Version) -> Server:
    folder = args.state_dir / "soak"
    folder.mkdir(parents=True, exist_ok=True)
    registry = fresh_registry(folder / "registry", first)
    config, target, metrics_url = write_config(folder, registry.root, args)
    argv = [CLI, "-v", "serve", "--config", str(config)]
    supervisor = Supervisor(argv, folder / "serve.log", restart_s=1.0)
    supervisor.start()
    with NerClient(target, timeout=120) as client:
        client.wait_ready(600)
        limits = Limits.from_info(client.info())
    sampler = Sampler(supervisor, metrics_url)
    sampler.start()
    command = shlex.join(["appliance", *argv[1:]])
    return Server(registry, target, supervisor, sampler, limits, command)


def soak_events(args: argparse.Namespace, faults: Faults, supervisor: Supervisor) -> list[Event]:
    seconds = args.minutes * 60
    events: list[Event] = [(f * seconds, faults.promote_next) for f in args.swap_at]
    if args.kill_at is not None:
        events.append((args.kill_at * seconds, lambda: faults.kill(supervisor)))
    return events


def load_phase(spec: LoadSpec, clients: int, minutes: float, events: Sequence[Event] = ()) -> Phase:
    t0, outcomes = run_load(spec, clients, minutes * 60, events)
    return Phase(t0, time.monotonic() - t0, outcomes)


def nightly_run(args: argparse.Namespace, spec: LoadSpec, supervisor: Supervisor) -> Phase:
    """The load beside `appliance train` at nice 19, with the CPU seconds each side got."""
    out = args.state_dir / "soak" / f"nightly-{os.getpid()}"
    argv = ["nice", "-n", "19", CLI, "train", "--state-dir", str(args.state_dir)]
    argv += [*NIGHTLY_ARGS, "--out", str(out)]
    log = (args.state_dir / "soak" / "nightly.log").open("ab")
    train = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)
    try:
        time.sleep(args.train_warmup_s)  # past loading the base and tokenizing the notes
        before = (cpu_seconds(train.pid), cpu_seconds(supervisor.pid))
        phase = load_phase(spec, args.clients, args.compare_minutes)
        phase.train_cpu_before_s = before[0]
        phase.train_cpu_s = cpu_seconds(train.pid) - before[0]
        phase.serve_cpu_s = cpu_seconds(supervisor.pid) - before[1]
        phase.train_running = train.poll() is None
    finally:
        train.send_signal(signal.SIGTERM)
        train.wait(timeout=120)
        log.close()
        for leftover in (out, out.with_name(out.name + ".partial")):
            shutil.rmtree(leftover, ignore_errors=True)
    phase.command = shlex.join(["nice", "-n", "19", "appliance", *argv[4:]])
    return phase


def rest(seconds: float) -> tuple[float, float]:
    """No load for `seconds` (the server answers nothing and releases memory); when."""
    started = time.monotonic()
    time.sleep(seconds)
    return started, time.monotonic()


def run(args: argparse.Namespace) -> SoakRecord:
    started = time.monotonic()
    all_versions, package_command = versions(args.state_dir, len(args.swap_at))
    exports = prepare_exports(args.backend, args.state_dir, all_versions)
    prepare_s = time.monotonic() - started
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exports[0] / "tokenizer"), local_files_only=True)
    clinical = clinical_items(tokenizer, args.note_tokens, args.notes_per_size)
    server = start_server(args, all_versions[0])
    first = {v.version for v in [server.registry.current()] if v is not None}
    hostile = hostile_items(server.limits)
    spec = LoadSpec(server.target, clinical, hostile, args.hostile_share, server.limits, first)
    faults = Faults(server.registry, all_versions[1:], spec)
    compare: dict[str, Phase] = {}
    rests: dict[str, tuple[float, float]] = {}
    try:
        if args.warmup_minutes > 0:
            load_phase(spec, args.clients, args.warmup_minutes)
            rests["after warm-up"] = rest(args.rest_s)
        events = soak_events(args, faults, server.supervisor)
        soak = load_phase(spec, args.clients, args.minutes, events)
        rests["after the soak"] = rest(args.rest_s)
        if args.compare_minutes > 0:
            compare["idle"] = load_phase(spec, args.clients, args.compare_minutes)
            compare["nightly"] = nightly_run(args, spec, server.supervisor)
    finally:
        server.sampler.stop()
        server.supervisor.stop()
    return SoakRecord(
        args, package_command, server.command, prepare_s, exports, clinical, hostile,
        server.limits, soak, faults.promotions, faults.kills, server.supervisor.lives,
        server.sampler.samples, compare, rests, serving_env(),
    )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--swap-at", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of the soak")
    parser.add_argument("--no-kill", dest="kill_at", action="store_const", const=None)
    parser.add_argument("--rss-warmup-s", type=float, default=60.0, help="RSS baseline after")
    parser.add_argument(
        "--warmup-minutes", type=float, default=3.0, help="load before the soak (0: none)"
    )
    parser.add_argument(
        "--rest-s", type=float, default=20.0, help="no load after warm-up and soak: RSS at rest"
    )
    parser.add_argument("--compare-minutes", type=float, default=2.0, help="0: skip")
    parser.add_argument("--train-warmup-s", type=float, default=45.0)
    parser.add_argument("--note-tokens", type=int, nargs="+", default=list(NOTE_TOKENS))
    parser.add_argument("--notes-per-size", type=int, default=12)
    parser.add_argument("--backend", default="onnx-int8")
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    parser.add_argument("--save-record", type=Path, help="also pickle the raw records here")
    parser.add_argument("--from-record", type=Path, help="only rewrite --out from a pickle")
    parser.add_argument("--note", action="append", default=[], help="add a line to the notes")
    args = parser.parse_args()
    args.state_dir = args.state_dir.resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.from_record is not None:
        record = pickle.loads(args.from_record.read_bytes())  # a file this script wrote
    else:
        record = run(args)
        record.command = "python " + shlex.join(["benchmarks/soak.py", *sys.argv[1:]])
        record.machine = machine()
        record.date = time.strftime("%Y-%m-%d %H:%M")
    if args.save_record is not None:
        args.save_record.write_bytes(pickle.dumps(record))
    write_report(args.out, record, args.note)
    print(f"[soak] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
