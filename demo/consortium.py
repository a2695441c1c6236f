"""A consortium on this machine: `flower-superlink` with TLS and SuperNode authentication,
`flower-supernode` processes, and `flwr run` of this checkout's Flower app.

The demo's launcher and the deployment test's: a real deployment runs the same programs as
services (ansible/); key material comes from `federation.deploy.make_certificates`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.sources import ROOT
from federation.config import FederationConfig, to_run_config
from federation.daemon_config import toml_value
from federation.deploy import free_port

RUN_PROCESS = "flwr-run"  # the `flwr run --stream` of the current run (see Consortium.run)


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name) or name


@dataclass(frozen=True)
class RunResult:
    ok: bool
    stdout: str
    stderr: str
    status: str = ""

    @property
    def tail(self) -> str:
        return f"status {self.status}: " + (self.stdout + self.stderr)[-3000:]


@dataclass
class Consortium:
    """A SuperLink and SuperNodes on this machine (the localhost deployment and its test)."""

    workdir: Path
    certs: dict[str, Path]
    port: int = field(default_factory=free_port)
    server_state: Path | None = None  # the ServerApp's APPLIANCE_STATE_DIR (default: in workdir)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.server_state is not None:
            env["APPLIANCE_STATE_DIR"] = str(self.server_state)
        env.setdefault("APPLIANCE_STATE_DIR", str(self.workdir / "server-state"))
        return env

    def spawn(
        self, name: str, command: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            cwd=self.workdir,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def check_alive(self) -> None:
        """Raise if a process this consortium started has exited (its log says why)."""
        for name, proc in list(self.processes.items()):
            if name != RUN_PROCESS and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}; see {self.workdir}/{name}.log"
                )

    def start_superlink(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_connection()
        self.spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.workdir / "superlink.db"),
            ],
        )
        self._wait_for_port()

    def _write_connection(self) -> None:
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "consortium"\n\n[superlink.consortium]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca"]}"\n',
            encoding="utf-8",
        )

    def _wait_for_port(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.workdir}/superlink.log")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"SuperLink did not open port {self.port} in {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_bin("flwr"), *args],
            env=self.env,
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def register(self, hospital: str) -> None:
        done = self.flwr(
            "supernode",
            "register",
            str(self.certs[f"{hospital}.pub"]),
            "consortium",
            "--name",
            hospital,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"registering {hospital} failed: {done.stdout[-400:]}{done.stderr[-400:]}"
            )

    def start_supernode(
        self,
        hospital: str,
        node_config: dict[str, Any],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        values = " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())
        self.spawn(
            hospital,
            [
                _bin("flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--root-certificates",
                str(self.certs["ca"]),
                "--auth-supernode-private-key",
                str(self.certs[f"{hospital}.key"]),
                "--node-config",
                values,
                "--port",
                str(free_port()),
            ],
            extra_env,
        )

    def run(self, cfg: FederationConfig, timeout: float = 600.0) -> RunResult:
        """Submit the app with `cfg` as run config, stream it until it ends, report its status.

        `flwr run` is one of this consortium's processes while it streams, so `stop()` (also
        on Ctrl-C) ends it with the rest; its output is appended to `flwr-run.log`.
        """
        overrides = " ".join(f"{k}={toml_value(v)}" for k, v in to_run_config(cfg).items())
        log_path = self.workdir / "flwr-run.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [_bin("flwr"), "run", str(ROOT), "consortium", "--run-config", overrides]
        deadline = time.monotonic() + timeout
        proc = self.spawn(RUN_PROCESS, [*command, "--stream"])
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(RUN_PROCESS)
        self.processes.pop(RUN_PROCESS, None)
        output = log_path.read_bytes()[offset:].decode("utf-8", "replace")
        # `flwr run --stream` exits 0 even when the ServerApp failed, and its log stream can end
        # while the run goes on (a loaded machine): ask the SuperLink until the run ends.
        match = re.search(r"run_id `(\d+)`|started run (\d+)", output)
        run_id = (match.group(1) or match.group(2)) if match else None
        left = max(120.0, deadline - time.monotonic())
        status = self.run_status(run_id, left) if run_id else "unknown (no run id)"
        return RunResult(status == "finished:completed", output, "", status)

    def run_status(self, run_id: str, timeout: float = 120.0) -> str:
        """The SuperLink's status of a run once it has finished (e.g. finished:completed)."""
        deadline, status = time.monotonic() + timeout, "unknown"
        while time.monotonic() < deadline:
            listed = self.flwr("ls", "consortium", "--run-id", run_id, "--format", "json")
            try:
                runs = json.loads(listed.stdout).get("runs", [])
                status = str(runs[0]["status"]) if runs else status
            except (ValueError, KeyError, IndexError, AttributeError):
                status = "unreadable"
            if status.startswith("finished"):
                return status
            time.sleep(2)
        return status

    def stop(self, name: str | None = None) -> None:
        """Stop one process, or all: everything else at once, then the SuperLink last (so the
        SuperNodes can sign off from it)."""
        if name is not None:
            return self._stop([name])
        self._stop([key for key in reversed(self.processes) if key != "superlink"])
        self._stop(["superlink"])
        # A ServerApp whose launcher already exited is no descendant of anything here: found by
        # the SuperLink address it was started against.
        _end(serverapps(self.port))

    def _stop(self, names: list[str]) -> None:
        """SIGTERM the process groups of `names` at once, SIGKILL what is left after 20 s; then
        end what they started in sessions of their own (the ServerApp) and did not stop."""
        stopping = []
        for key in names:
            proc = self.processes.pop(key, None)
            if proc is None or proc.poll() is not None:
                continue
            stopping.append((proc, descendants(proc.pid)))
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc, children in stopping:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _end(children)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = []
    for child in map(int, text.split()):
        found += [child, *descendants(child)]
    return found


def serverapps(port: int) -> list[int]:
    """The `flwr-serverapp` processes started against a SuperLink on local `port`."""
    address = f"127.0.0.1:{port}"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("flwr-serverapp") for a in argv) and address in argv:
            found.append(int(entry.name))
    return found


def _end(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM the still-running `pids`, SIGKILL those alive after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        alive = [pid for pid in pids if _running(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
