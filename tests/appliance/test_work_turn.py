"""The box's work turn: one memory-heavy job at a time, across processes, freed by death."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.work_turn import TurnBusy, work_turn

HOLD = """
import sys, time
from appliance.work_turn import work_turn
with work_turn(sys.argv[1], "the other job", 0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def holder(registry: Path, seconds: float = 600) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `registry`'s work turn for `seconds` (killed on exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(registry), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_held_turn_is_refused_at_once_without_waiting(tmp_path: Path) -> None:
    with holder(tmp_path):
        started = time.monotonic()
        with (
            pytest.raises(
                TurnBusy, match=r"^export did not run: .* holds the work turn \(waited 0 s\)"
            ),
            work_turn(tmp_path, "export", 0),
        ):
            pass
        assert time.monotonic() - started < 1


def test_a_waiting_job_gives_up_after_its_bound(tmp_path: Path) -> None:
    with holder(tmp_path):
        started = time.monotonic()
        with pytest.raises(TurnBusy, match=r"waited 0.6 s"), work_turn(tmp_path, "training", 0.6):
            pass
        assert time.monotonic() - started >= 0.6


def test_a_waiting_job_runs_once_the_holder_ends(tmp_path: Path) -> None:
    with holder(tmp_path, seconds=1.0):
        started = time.monotonic()
        with work_turn(tmp_path, "training", 30):
            assert time.monotonic() - started >= 0.8  # it ran once the holder's second was up


def test_a_killed_holder_frees_the_turn(tmp_path: Path) -> None:
    with holder(tmp_path) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with work_turn(tmp_path, "export", 0):
            pass


def test_the_turn_is_one_at_a_time_within_a_process_too(tmp_path: Path) -> None:
    with (
        work_turn(tmp_path, "training", 0),
        pytest.raises(TurnBusy, match="export did not run"),
        work_turn(tmp_path, "export", 0),
    ):
        pass
    with work_turn(tmp_path, "export", 0):  # released on exit
        pass


def test_a_missing_registry_or_negative_wait_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(TurnBusy, match="cannot open the registry"),
        work_turn(tmp_path / "nowhere", "export", 0),
    ):
        pass
    with (
        pytest.raises(ValueError, match="wait_s must be at least 0"),
        work_turn(tmp_path, "export", -1),
    ):
        pass
