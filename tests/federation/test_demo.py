"""The README's main job, `python -m demo`, end to end on the tiny Llama: real SuperLink,
three daemons with their SuperNodes, three serving processes, rounds with DP and SecAgg+,
promotion into serving, the gRPC call; then nothing it started is left running, also after
Ctrl-C. Slow (minutes): every ClientApp message starts a process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.registry import ModelRegistry
from demo import warm_start
from demo.cli import main
from demo.federated import ConsortiumDemo, training_window
from demo.plan import DemoPlan, make_plan
from demo.sources import WARM_START
from federation.warm_start import SETTINGS, load_warm_start

ROOT = Path(__file__).resolve().parents[2]


def tiny_plan(base: Path, rounds: int, dp: bool = True) -> DemoPlan:
    """The full demo's consortium (LoRA, DP-SGD with calibrated noise unless `dp` is false,
    SecAgg+) on the tiny Llama and ~20 notes a box, from the seeded start (the shipped warm start
    is the embedded model's)."""
    federation = replace(
        make_plan(quick=False, dp=dp).federation,
        base=str(base),
        layers="top:2",
        lora_rank=4,
        lora_alpha=8,
        rounds=rounds,
        batch_size=8,
        warm_start="",
    )
    return DemoPlan(60, 15, federation, backend="torch-fp32", split_seed=13)


def processes_of(folder: Path) -> list[int]:
    """Pids whose environment names `folder` (every process the demo starts inherits it)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_gone(folder: Path, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_of(folder)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


@pytest.mark.timeout(900)
def test_demo_trains_promotes_serves_and_stops_everything(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    work, state = tmp_path / "demo", tmp_path / "state"
    monkeypatch.setenv("APPLIANCE_DEMO_MARKER", str(work))  # inherited: finds stragglers
    demo = ConsortiumDemo(tiny_plan(tiny_llama, rounds=2), work, state)
    summary = demo.run()
    out = capsys.readouterr().out
    assert [row["round"] for row in summary["rounds"]] == [1, 2]
    # the EHRs' corrections: every one stored once, beside the imported notes
    for name, notes in summary["notes"].items():
        sent = notes.get("corrected", 0) + notes.get("accepted", 0)
        assert notes.get("failed", 0) == 0 and notes["in_store"] == notes["imported"] + sent, name
    assert sum(n.get("corrected", 0) + n.get("accepted", 0) for n in summary["notes"].values())
    for row in summary["rounds"]:
        assert set(row["f1"]) == {"hospital-a", "hospital-b", "hospital-c"}, out
        assert all(0.0 <= f1 <= 1.0 for f1 in row["f1"].values())
        assert row["bytes"] > 0
    assert set(summary["epsilon_spent"]) == {"hospital-a", "hospital-b", "hospital-c"}
    spent = summary["epsilon_by_round"]
    for name, total in summary["epsilon_spent"].items():  # 2 of the 10 rounds epsilon 8 lasts
        assert 0 < spent[1][name] < total == spent[2][name] < 8.0, spent
    assert isinstance(summary["entities"], list)
    registry = ModelRegistry(work / "hospital-a" / "registry")
    assert [v.split("-", 1)[1] for v in registry.versions()] == ["round-1", "round-2"]
    current = registry.current()  # round 2's, or round 1's if round 2 scored worse
    assert current is not None
    assert f"entities found by model version {current.version}" in out
    assert "rounds (strict entity F1" in out and "privacy spent (epsilon at delta" in out
    assert "each box's noise calibrated so that its budget lasts 10 rounds" in out
    assert "require_dp = true" in (work / "hospital-b" / "daemon.toml").read_text()
    assert json.loads((work / "summary.json").read_text())["rounds"] == json.loads(
        json.dumps(summary["rounds"])
    )
    assert demo.consortium is not None and not demo.consortium.processes
    assert wait_gone(work) == []


_RUN = """
import sys
from pathlib import Path
from demo.federated import ConsortiumDemo
from tests.federation.test_demo import tiny_plan
plan = tiny_plan(Path(sys.argv[1]), rounds=50, dp=False)  # --no-dp
ConsortiumDemo(plan, Path(sys.argv[2]), Path(sys.argv[3])).run()
"""


@pytest.mark.timeout(600)
def test_ctrl_c_stops_every_process_the_demo_started(tiny_llama: Path, tmp_path: Path):
    work = tmp_path / "demo"
    args = [str(tiny_llama), str(work), str(tmp_path / "state")]
    env = {**os.environ, "APPLIANCE_DEMO_MARKER": str(work)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "training on its own notes" in line:
                break
        assert len(processes_of(work)) >= 8, "".join(lines)  # link, daemons, nodes, serving
        # --no-dp: the boxes train in rounds without DP too (their default requires it)
        assert "require_dp = false" in (work / "hospital-a" / "daemon.toml").read_text()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "stopping every process the demo started" in rest
        assert wait_gone(work) == [], "".join(lines) + rest
    finally:  # a failed run must not leave a consortium running behind the test suite
        proc.kill()
        for pid in processes_of(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_plans_and_window():
    quick = make_plan(quick=True)
    assert quick.rounds == 1 and quick.backend == "torch-fp32"
    full = make_plan(quick=False, rounds=5, backend="onnx-int4")
    assert full.rounds == 5 and full.backend == "onnx-int4"
    private = full.federation  # DP is the default: the budget's defaults, calibrated noise
    assert private.dp and private.secagg and private.min_nodes == 3
    assert (private.dp_epsilon_budget, private.dp_rounds, private.dp_noise_multiplier) == (8, 10, 0)
    public = make_plan(quick=False, dp=False).federation
    assert not public.dp and replace(public, dp=True) == replace(private, rounds=2)
    import datetime as dt

    assert training_window(dt.datetime(2026, 1, 1, 23, 30)) == "23:29-01:30"


def test_the_shipped_warm_start_fits_every_plan():
    """Its binding settings (base, attention, labels, mode, layers, LoRA shape) are the plans'
    and its tensors finite; the ServerApp checks the shapes against the model at run time."""
    with np.load(WARM_START, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files if key != SETTINGS}
    for plan in (make_plan(quick=False), make_plan(quick=True)):
        assert plan.federation.warm_start == str(WARM_START)
        assert load_warm_start(WARM_START, plan.federation, arrays).keys() == arrays.keys()
    with pytest.raises(ValueError, match="made for layers = 'top:8', the run has 'top:4'"):
        load_warm_start(WARM_START, replace(plan.federation, layers="top:4"), arrays)
    with pytest.raises(ValueError, match="warm start is missing; `python -m demo --make-warm"):
        warm_start.check(str(WARM_START.with_name("absent.npz")))
    warm_start.check("")  # none named: the seeded start


@pytest.mark.timeout(900)
def test_make_warm_start_trains_what_every_plan_accepts(tmp_path: Path):
    """`python -m demo --make-warm-start`'s function on 8 public sentences with the embedded
    model: a warm start with the shipped one's tensors (not its values) that every plan loads."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.tsv", "test.tsv"):
        (data / name).write_text("", encoding="utf-8")
    devel = (ROOT / "data" / "bc5cdr" / "devel.tsv").read_text(encoding="utf-8")
    (data / "devel.tsv").write_text("\n\n".join(devel.split("\n\n")[:8]) + "\n", "utf-8")
    out = tmp_path / "warm.npz"
    made = warm_start.make(tmp_path / "state", data, out)
    assert made["notes"] == 8 and made["epochs"] == 3 and made["lora_rank"] == 16
    with np.load(out, allow_pickle=False) as fresh, np.load(WARM_START) as shipped:
        arrays = {key: fresh[key] for key in fresh.files if key != SETTINGS}
        assert arrays.keys() == {key for key in shipped.files if key != SETTINGS}
        assert any(not np.array_equal(arrays[k], shipped[k]) for k in arrays)
    for plan in (make_plan(quick=False), make_plan(quick=True)):
        assert load_warm_start(out, plan.federation, arrays).keys() == arrays.keys()


def test_demo_refuses_bad_flags_before_starting_anything(tmp_path: Path, capsys):
    assert main(["--rounds", "0", "--state-dir", str(tmp_path)]) == 2
    assert "--rounds 0: must be >= 1" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--state-dir", str(tmp_path)]) == 2
    assert "missing train.tsv, devel.tsv, test.tsv" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


ENTITY_LINE = re.compile(r"^  \[\s*\d+,\s*\d+\)  (\S+)\s+\d\.\d\d  \S")


@pytest.mark.timeout(2700)
def test_the_main_job_finds_the_sample_notes_diseases_and_drugs(tmp_path: Path):
    """`python -m demo` as the README runs it: the embedded SmolLM2-135M, 3 boxes, 2 rounds with
    DP-SGD from the shipped warm start, a fresh state dir (the base is materialized from its
    GGUF). The EHR call on the sample note must find its diseases as well as its drugs, and every
    box must have spent epsilon. Slow: ~6 minutes on 2 cores."""
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2600,
        check=False,
    )
    shown = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, shown
    lines = done.stdout.splitlines()
    called = next(i for i, line in enumerate(lines) if "entities found by model version" in line)
    labels = [m.group(1) for line in lines[called:] if (m := ENTITY_LINE.match(line))]
    assert "Disease" in labels and "Chemical" in labels, shown
    assert set(labels) <= {"Chemical", "Disease"}, shown
    spent = lines.index(next(line for line in lines if "privacy spent (epsilon" in line))
    for row in lines[spent + 2 : spent + 4]:  # the header, then rounds 1 and 2
        cells = row.split()
        assert len(cells) == 4 and all(0 < float(eps) < 8 for eps in cells[1:]), shown
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir()), shown


def test_python_m_demo_runs_from_the_checkout(tmp_path: Path):
    """The README's command line: `python -m demo` from the repository root."""
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--rounds", "0", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "demo: error: --rounds 0: must be >= 1" in done.stderr
