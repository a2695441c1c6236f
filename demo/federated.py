"""`python -m demo`: the whole product on one machine, with the embedded SmolLM2-135M.

A consortium of three hospital boxes: one `flower-superlink` (TLS, SuperNode authentication),
and per box the nightly federation daemon (`appliance federate daemon`, which runs the box's
`flower-supernode` inside its training window) and the serving process (`appliance serve`,
following the box's model registry, with the curation API). BC5CDR training sentences are split
over the boxes with a Dirichlet label skew; each box also gets its own held-out sentences, and
both go into the box's note store, which its rounds train on (a keyed hash of the note id holds
a share out for promotion). The consortium starts from its public warm start and runs a few
rounds (LoRA on the top 8 layers, SecAgg+ on the server, DP-SGD at each box unless `--no-dp`);
after each round every box promotes the global model into its registry if it is not worse on its
held-out notes, and serving swaps it in.
Meanwhile a simulated EHR at each box (`demo.ehr`) shows clinicians the served model's entities
for new notes and sends their corrections back through the curation API; later rounds train on
them. Then an EHR-style client sends a sample note over gRPC. Everything is started as real
processes and stopped at the end or on Ctrl-C.

Serving and federation meet only through the registry and the note store on disk: this module
starts both as `appliance` processes and talks to serving through its CLI, its gRPC API and its
metrics endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import ModelConfig
from appliance.notes import Note
from appliance.readers import read_notes
from appliance.registry import ModelRegistry
from appliance.writers import write_conll
from demo.consortium import Consortium, RunResult
from demo.ehr import SimulatedEhr, collected, import_notes
from demo.plan import DemoPlan, describe
from demo.progress import Progress, say
from demo.sources import DATA, PUBLIC_NOTES, SAMPLE_NOTE
from federation.daemon_config import toml_value
from federation.deploy import free_port, make_certificates
from federation.partition import dominant_label, partition

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")


@dataclass
class Box:
    """One hospital box: its files under the demo folder and its local ports."""

    name: str
    root: Path
    serving_port: int = field(default_factory=free_port)
    serving_metrics: int = field(default_factory=free_port)
    daemon_metrics: int = field(default_factory=free_port)
    runtime_port: int = field(default_factory=free_port)
    unseen: list[Note] = field(default_factory=list)  # the EHR's new notes, shown then corrected
    imported: int = 0  # annotated notes put into its note store at the start

    @property
    def note_store(self) -> Path:
        return self.root / "notes.sqlite"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def journal(self) -> Path:
        return self.root / "federation" / "journal.jsonl"

    def served_version(self) -> str | None:
        """The version serving reports on its Prometheus endpoint (None: not up or no model)."""
        url = f"http://127.0.0.1:{self.serving_metrics}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - loopback
                text = reply.read().decode("utf-8")
        except OSError:
            return None
        match = re.search(r'appliance_ner_model_info\{[^}]*version="([^"]+)"', text)
        return match.group(1) if match else None


def _write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A config file of flat tables (keys are written as given, values TOML-quoted)."""
    lines = []
    for table, values in tables.items():
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _appliance_cli() -> str:
    """The `appliance` command of this environment (the one the demo itself runs from)."""
    return str(Path(sys.executable).with_name("appliance"))


def one_core_each() -> dict[str, str]:
    """Three boxes share this machine's cores: one thread per process, or torch's and ONNX
    Runtime's spinning thread pools oversubscribe the cores (the quick demo's round trained in
    70 s with the default pools, 22 s with one thread each)."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupt_on_signals() -> dict[int, Any]:
    """Ctrl-C and SIGTERM stop the demo and everything it started, even where the demo was
    launched with SIGINT ignored (a background job of a non-interactive shell)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def training_window(now: dt.datetime, hours: int = 2) -> str:
    """A window that opened a minute ago and stays open long enough for the demo."""
    start, end = now - dt.timedelta(minutes=1), now + dt.timedelta(hours=hours)
    return f"{start:%H:%M}-{end:%H:%M}"


class ConsortiumDemo:
    """Prepare the boxes, start every process, run the rounds, call serving, stop everything."""

    def __init__(self, plan: DemoPlan, workdir: Path, state_dir: Path, data: Path = DATA) -> None:
        self.plan, self.workdir, self.state_dir, self.data = plan, workdir, state_dir, data
        self.boxes = [Box(name, workdir / name) for name in HOSPITALS]
        self.consortium: Consortium | None = None
        self.progress = Progress(self.boxes, plan.rounds, plan.federation.dp_delta)
        self.stop_ehr = threading.Event()
        self.ehrs: list[SimulatedEhr] = []

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        previous = _interrupt_on_signals()
        try:
            self._shards()
            base = threading.Thread(target=self._materialize, daemon=True)
            base.start()  # one core dequantizes while the other starts the processes
            self._start()
            self._start_ehrs()
            base.join()
            if self.progress.full_model_bytes == 0:
                raise RuntimeError(f"the base model did not load; see {self.workdir}")
            result = self._rounds()
            if not result.ok:
                raise RuntimeError(
                    f"the consortium run did not complete ({result.status}); "
                    f"logs are in {self.workdir}"
                )
            entities = self._annotate()
        finally:
            for sig in previous:  # a second Ctrl-C must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
            say("stopping every process the demo started")
            self.stop_ehr.set()
            for ehr in self.ehrs:
                ehr.join(timeout=60)
            if self.consortium is not None:
                self.consortium.stop()
            _restore(previous)
        notes = self._collected()
        summary = self.progress.summary(entities, time.monotonic() - started)
        summary["notes"] = notes
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
        return summary

    # -- preparation -------------------------------------------------------------------------

    def _materialize(self) -> None:
        """Load the base once, so every process finds it as fp32 safetensors (a GGUF is
        dequantized on the first run, ~20-40 s); the SuperNodes need it only when a round starts."""
        from appliance.model import load_model

        say("materializing the base once for every process (first run: GGUF -> fp32)")
        try:
            loaded = load_model(ModelConfig(base=self.plan.federation.base),
                                ("Chemical", "Disease"), self.state_dir, "head")  # fmt: skip
        except Exception as err:  # reported by run(), which checks the byte count
            say(f"the base model did not load: {err}")
            return
        self.progress.full_model_bytes = sum(p.numel() * 4 for p in loaded.model.parameters())
        say("base ready")

    def _shards(self) -> None:
        say(f"demo folder {self.workdir}; the embedded SmolLM2-135M (30 layers)")
        train = read_notes(str(self.data / "train.tsv")).notes[: self.plan.train_notes]
        devel = read_notes(str(self.data / "devel.tsv")).notes
        seed = self.plan.split_seed
        shards = partition(train, len(self.boxes), "dirichlet", alpha=0.5, seed=seed)
        unseen = read_notes(str(self.data / "train.tsv")).notes[self.plan.train_notes :]
        for i, (box, notes) in enumerate(zip(self.boxes, shards, strict=True)):
            first = PUBLIC_NOTES + i * self.plan.heldout_notes  # after the warm start's notes
            held = devel[first : first + self.plan.heldout_notes]
            write_conll(notes, box.root / "notes.tsv")
            write_conll(held, box.root / "heldout.tsv")
            import_notes(box.note_store, notes + held)
            box.imported = len(notes) + len(held)
            box.unseen = unseen[i * self.plan.ehr_notes : (i + 1) * self.plan.ehr_notes]
            mix = Counter(dominant_label(n) for n in notes)
            share = ", ".join(f"{k} {v / len(notes):.0%}" for k, v in mix.most_common())
            say(
                f"{box.name}: {len(notes)} annotated BC5CDR sentences (by dominant entity "
                f"type: {share}), {len(held)} held out"
            )

    def _start(self) -> None:
        certs = make_certificates(self.workdir / "certs", [b.name for b in self.boxes])
        consortium = Consortium(self.workdir / "superlink", certs, server_state=self.state_dir)
        self.consortium = consortium
        consortium.start_superlink()
        say(f"SuperLink up on 127.0.0.1:{consortium.port} (TLS, SuperNode authentication)")
        appliance = _appliance_cli()
        window = training_window(dt.datetime.now().astimezone())
        for box in self.boxes:
            consortium.register(box.name)
            daemon = self._daemon_config(box, certs, window)
            command = [appliance, "federate", "daemon", "--config", str(daemon)]
            consortium.spawn(f"{box.name}-daemon", command, one_core_each())
            command = [appliance, "serve", "--config", str(self._serving_config(box))]
            consortium.spawn(f"{box.name}-serving", command, one_core_each())
            say(
                f"{box.name}: federation daemon (window {window}, metrics :{box.daemon_metrics}),"
                f" serving {self.plan.backend} on :{box.serving_port} "
                f"(metrics :{box.serving_metrics})"
            )
        self._await_nodes(consortium)

    def _daemon_config(self, box: Box, certs: dict[str, Path], window: str) -> Path:
        assert self.consortium is not None
        values = {
            "hospital": box.name,
            "superlink": f"127.0.0.1:{self.consortium.port}",
            "root_certificates": str(certs["ca"]),
            "auth_private_key": str(certs[f"{box.name}.key"]),
            "note_store": str(box.note_store),
            "heldout_fraction": self.plan.heldout_fraction,
            "min_new_notes": 0,  # every box answers every round (SecAgg+ needs all three)
            "state_dir": str(box.root / "federation"),
            "registry": str(box.registry),
            "window": window,
            "tolerance": 0.01,
            "runtime_port": box.runtime_port,
            "metrics_port": box.daemon_metrics,
            "poll_s": 1.0,
            "require_dp": self.plan.federation.dp,  # --no-dp: the boxes train without DP too
        }
        node_config: dict[str, Any] = {'"bases-dir"': str(self.state_dir)}
        tables = {"daemon": values, "daemon.node_config": node_config}
        return _write_toml(box.root / "daemon.toml", tables)

    def _serving_config(self, box: Box) -> Path:
        values = {
            "registry": str(box.registry),
            "backend": self.plan.backend,
            "state_dir": str(self.state_dir),
            "port": box.serving_port,
            "metrics_port": box.serving_metrics,
            "watch_interval_s": 1.0,
            "threads": 1,
            "note_store": str(box.note_store),
        }
        return _write_toml(box.root / "serving.toml", {"serving": values})

    def _await_nodes(self, consortium: Consortium, timeout: float = 180.0) -> None:
        deadline, online = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            consortium.check_alive()
            listed = consortium.flwr("supernode", "ls", "consortium", "--format", "json")
            try:
                nodes = json.loads(listed.stdout or "{}").get("nodes", [])
            except ValueError:
                nodes = []
            online = sum(1 for n in nodes if n.get("status") == "online")
            if online == len(self.boxes):
                say(f"{online}/{len(self.boxes)} SuperNodes online")
                return
            time.sleep(2)
        raise TimeoutError(f"only {online} SuperNodes came online; see {self.workdir}")

    def _start_ehrs(self) -> None:
        for box in self.boxes:
            ehr = SimulatedEhr(
                box.name,
                f"127.0.0.1:{box.serving_port}",
                box.unseen,
                self.plan.ehr_batch,
                box.served_version,
                self.stop_ehr,
            )
            ehr.start()
            self.ehrs.append(ehr)
        say(
            f"a simulated EHR at each box shows {self.plan.ehr_batch} new notes per served "
            "model version and sends the clinicians' corrections to the box's note store"
        )

    def _collected(self) -> dict[str, dict[str, int]]:
        stores = [(box.name, box.note_store, box.imported) for box in self.boxes]
        return collected(stores, self.ehrs)

    # -- rounds, promotion, serving ----------------------------------------------------------

    def _rounds(self) -> RunResult:
        assert self.consortium is not None
        cfg = self.plan.federation
        say(describe(cfg))
        outcome: list[RunResult] = []
        runner = threading.Thread(
            target=lambda: outcome.append(self.consortium.run(cfg, timeout=3600)),  # type: ignore[union-attr]
            daemon=True,
        )
        runner.start()
        while runner.is_alive():
            self.progress.poll()
            self.consortium.check_alive()
            runner.join(timeout=2.0)
        self.progress.poll()
        return outcome[0]

    def _annotate(self) -> list[dict[str, Any]]:
        box = self.boxes[0]
        current = ModelRegistry(box.registry).current()
        if current is None:
            raise RuntimeError(f"{box.name} promoted no model; see {box.journal}")
        say(f"waiting for {box.name}'s serving to swap in {current.version}")
        deadline = time.monotonic() + 600
        while box.served_version() != current.version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving did not load {current.version}; see {self.workdir}")
            assert self.consortium is not None
            self.consortium.check_alive()
            time.sleep(1)
        say(f"an EHR client sends a sample note to {box.name} over gRPC (127.0.0.1:"
            f"{box.serving_port})")  # fmt: skip
        appliance = _appliance_cli()
        done = subprocess.run(
            [
                appliance,
                "annotate",
                "--remote",
                f"127.0.0.1:{box.serving_port}",
                "--text",
                SAMPLE_NOTE,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the gRPC call failed: {done.stderr.strip()[-500:]}")
        entities: list[dict[str, Any]] = json.loads(done.stdout)
        self.progress.show_note(SAMPLE_NOTE, entities, current.version)
        return entities


def run_demo(
    state_dir: Path,
    data: Path,
    plan: DemoPlan,
    workdir: Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the consortium in `workdir` (default <state-dir>/demo/<time>); remove the folder
    after a success unless `keep` (after a failure it stays, with the logs)."""
    workdir = workdir or state_dir / "demo" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    summary = ConsortiumDemo(plan, workdir, state_dir, data).run()
    if keep:
        say(f"kept {workdir} (logs, registries, summary.json)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary
