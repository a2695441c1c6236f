"""A real `ansible-playbook` run of site.yml against localhost into a temporary prefix.

The consortium (SuperLink with TLS and SuperNode authentication, the hospital's key registered)
and one hospital box (serving over mTLS, the federation daemon) are installed from the wheel into
their own virtualenv and started directly (systemd is not PID 1 here). Then: the installed
appliance answers gRPC health and a note, both exporters are scraped, `systemd-analyze verify`
accepts every rendered unit, and a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak_server import JEMALLOC  # where the role finds jemalloc on Debian
from federation.deploy import free_port, make_certificates
from tests.conftest import make_tiny_llama
from tests.deploy.tools import ANSIBLE, ROOT, require_root, tool
from tests.serving.servers import make_pki

HOSPITAL = "hospital-a"
# Budgets unlike the defaults, so the rendered units show they come from the inventory.
BUDGETS = {
    "hospital_node": {
        "serving_memory_high": "768M",
        "serving_memory_max": "1G",
        "serving_cpu_weight": 900,
        "federation_memory_high": "1536M",
        "federation_memory_max": "2G",
        "federation_cpu_weight": 40,
        "work_turn_memory": "512M",
    },
    "consortium": {
        "superlink_memory_high": "1280M",
        "superlink_memory_max": "1536M",
        "superlink_cpu_weight": 120,
        "round_memory_high": "384M",
        "round_memory_max": "512M",
    },
}
# unit -> (MemoryHigh, MemoryMax, CPUWeight) the units must carry, from BUDGETS or the defaults.
UNIT_BUDGETS = {
    "appliance-serving.service": ("768M", "1G", "900"),
    "appliance-federation.service": ("1536M", "2G", "40"),
    "appliance-nightly.service": ("768M", "1G", "40"),
    "appliance-superlink.service": ("1280M", "1536M", "120"),
    "appliance-round.service": ("384M", "512M", "120"),
}


def _run(cmd: list[str], cwd: Path = ROOT, timeout: float = 1800) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:3]} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _sentences(source: Path, count: int, dest: Path) -> Path:
    """The first `count` sentences of a BC5CDR IOB file."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")[:count]
    dest.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return dest


def _artifacts(work: Path) -> dict[str, Path]:
    """What the controller hands the roles: wheel, FAB, certificates, a base, a package, notes."""
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."])
    _run([tool("flwr"), "build", "--app", str(ROOT)], cwd=dist)
    certs = make_certificates(work / "certs", [HOSPITAL], ("127.0.0.1", "localhost"))
    pki = make_pki(work / "pki")
    base = make_tiny_llama(work / "tiny-llama")
    notes = _sentences(ROOT / "data/bc5cdr/train.tsv", 60, work / "notes.tsv")
    heldout = _sentences(ROOT / "data/bc5cdr/devel.tsv", 20, work / "heldout.tsv")
    package = work / "package"
    appliance = Path(sys.executable).with_name("appliance")
    _run(
        [
            str(appliance),
            "train",
            "--base",
            str(base),
            "--train",
            str(notes),
            "--layers",
            "top:1",
            "--epochs",
            "1",
            "--no-progress",
            "--no-cache",
            "--state-dir",
            str(work / "train-state"),
            "--out",
            str(package),
        ]
    )
    return {
        "wheel": next(dist.glob("*.whl")),
        "fab": next(dist.glob("*.fab")),
        "base": base,
        "package": package,
        "notes": notes,
        "heldout": heldout,
        **{f"fl_{k}": v for k, v in certs.items()},
        **{f"tls_{k}": v for k, v in pki.items()},
    }


def _inventory(work: Path, a: dict[str, Path], ports: dict[str, int]) -> Path:
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    consortium = {
        "consortium_prefix": str(work / "root"),
        "consortium_wheel": str(a["wheel"]),
        "consortium_fab": str(a["fab"]),
        "consortium_service_manager": "direct",
        "consortium_superlink_host": "127.0.0.1",
        "consortium_superlink_port": ports["superlink"],
        "consortium_superlink_address": f"127.0.0.1:{ports['superlink']}",
        "consortium_tls_ca_src": str(a["fl_ca"]),
        "consortium_tls_cert_src": str(a["fl_cert"]),
        "consortium_tls_key_src": str(a["fl_key"]),
        "consortium_hospitals": [{"name": HOSPITAL, "public_key": str(a[f"fl_{HOSPITAL}.pub"])}],
        **{f"consortium_{k}": v for k, v in BUDGETS["consortium"].items()},
    }
    hospital = {
        "hospital_node_prefix": str(work / "root"),
        "hospital_node_wheel": str(a["wheel"]),
        "hospital_node_service_manager": "direct",
        "hospital_node_name": HOSPITAL,
        "hospital_node_base_model": str(a["base"]),
        "hospital_node_initial_package": str(a["package"]),
        "hospital_node_notes_src": str(a["notes"]),
        "hospital_node_heldout_src": str(a["heldout"]),
        "hospital_node_serving_host": "127.0.0.1",
        "hospital_node_serving_port": ports["grpc"],
        "hospital_node_serving_metrics_host": "127.0.0.1",
        "hospital_node_serving_metrics_port": ports["serving_metrics"],
        "hospital_node_serving_backend": "torch-fp32",
        "hospital_node_tls_cert_src": str(a["tls_server_cert"]),
        "hospital_node_tls_key_src": str(a["tls_server_key"]),
        "hospital_node_tls_client_ca_src": str(a["tls_ca"]),
        "hospital_node_superlink": f"127.0.0.1:{ports['superlink']}",
        "hospital_node_superlink_ca_src": str(a["fl_ca"]),
        "hospital_node_auth_key_src": str(a[f"fl_{HOSPITAL}.key"]),
        "hospital_node_window": "00:00-23:59",
        "hospital_node_federation_metrics_host": "127.0.0.1",
        "hospital_node_federation_metrics_port": ports["federation_metrics"],
        "hospital_node_supernode_port": ports["supernode"],
        "hospital_node_allow_curate": ["ehr-client"],  # the client certificate of make_pki
        **{f"hospital_node_{k}": v for k, v in BUDGETS["hospital_node"].items()},
        **_allocator(),
    }
    inventory = {
        "consortium": {"hosts": {"consortium-local": {**common, **consortium}}},
        "hospitals": {"hosts": {"hospital-local": {**common, **hospital}}},
    }
    path = work / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2), encoding="utf-8")
    return path


def _allocator() -> dict[str, str]:
    """Serving's allocator: jemalloc where the machine has it (.ci/setup installs it), left
    unmanaged so the run installs no system package; glibc otherwise."""
    if JEMALLOC.is_file():
        return {"hospital_node_jemalloc_package": ""}
    return {"hospital_node_serving_allocator": "glibc"}


def _playbook(inventory: Path, extra: dict[str, str] | None = None) -> str:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    extra_args = ["--extra-vars", json.dumps(extra)] if extra else []
    done = subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), "site.yml", *extra_args],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    return done.stdout


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = output[output.rindex("PLAY RECAP") :]
    return {
        host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
        for host, rest in re.findall(r"^(\S+)\s+:\s+(.*)$", recap, flags=re.M)
    }


def _stop_services(root: Path) -> None:
    for pidfile in root.glob("run/*/*.pid"):
        subprocess.run(
            [
                "start-stop-daemon",
                "--stop",
                "--pidfile",
                str(pidfile),
                "--retry",
                "TERM/30/KILL/5",
                "--remove-pidfile",
            ],
            capture_output=True,
            check=False,
        )


@pytest.fixture(scope="module")
def deployed() -> Iterator[tuple[Path, Path, dict[str, int], str]]:
    require_root()
    tool("ansible-playbook")
    tool("systemd-analyze")
    work = Path(tempfile.mkdtemp(prefix="appliance-deploy-"))
    work.chmod(0o755)  # the service users read the base, the package and the notes from here
    ports = {
        k: free_port()
        for k in ("grpc", "serving_metrics", "federation_metrics", "supernode", "superlink")
    }
    try:
        artifacts = _artifacts(work)
        for path in [artifacts["base"], *artifacts["base"].rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # the services read the base in place
        inventory = _inventory(work, artifacts, ports)
        first = _playbook(inventory)
        yield work, inventory, ports, first
    finally:
        _stop_services(work / "root")
        shutil.rmtree(work, ignore_errors=True)


Deployed = tuple[Path, Path, dict[str, int], str]


def _analyze_over_mtls(work: Path, ports: dict[str, int], text: str) -> Any:
    """Waits for the installed server to be ready, then analyzes `text` with a client cert."""
    from serving.client import NerClient

    pki = work / "pki"
    with NerClient(
        f"localhost:{ports['grpc']}",
        ca=pki / "ca.pem",
        cert=pki / "client.pem",
        key=pki / "client.key",
    ) as client:
        client.wait_ready(180)
        return client.analyze(text)


def test_installed_appliance_answers_health_and_a_note_over_mtls(deployed: Deployed) -> None:
    work, _, ports, first = deployed
    assert "changed=" in first
    result = _analyze_over_mtls(work, ports, "Cisplatin-induced nephrotoxicity was excluded.")
    assert result.model_version.startswith("000001")


def test_the_notes_files_are_in_the_store_and_corrections_come_in(deployed: Deployed) -> None:
    import grpc

    from serving.client import NerClient

    work, _, ports, _ = deployed
    pki = work / "pki"
    target = f"localhost:{ports['grpc']}"
    with NerClient(target, ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key") as c:
        c.wait_ready(180)
        imported = c.store_stats().notes
        c.submit_annotation("ehr-1", 1, "Aspirin caused fever.", [(0, 7, "Chemical")], "coder-1")
        with pytest.raises(grpc.RpcError, match="may not delete"):
            c.delete_note("ehr-1", "filed in error")  # allow_delete is empty
        assert imported == 80 and c.store_stats().notes == 81  # 60 annotated + 20 held-out + 1
    daemon = next((work / "root/etc/appliance").glob("daemon.toml")).read_text()
    keys = {line.split(" = ")[0] for line in daemon.splitlines() if " = " in line}
    assert {"note_store", "min_new_notes"} <= keys and not {"notes", "heldout"} & keys
    assert "require_dp = true" in daemon and "epsilon_budget = 8.0" in daemon


def test_plaintext_client_is_refused_by_the_production_box(deployed: Deployed) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, _, ports, _ = deployed
    channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
    try:
        with pytest.raises(grpc.RpcError, match="UNAVAILABLE"):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        channel.close()


def test_both_exporters_are_scraped(deployed: Deployed) -> None:
    _, _, ports, _ = deployed
    serving = _scrape(ports["serving_metrics"])
    assert "appliance_ner_model_info{" in serving and "process_resident_memory_bytes" in serving
    federation = _scrape(ports["federation_metrics"])
    assert f'appliance_federation_window_open{{hospital="{HOSPITAL}"}} 1.0' in federation


def test_supernode_joined_the_superlink(deployed: Deployed) -> None:
    work, _, _, _ = deployed
    home = work / "root/var/lib/appliance-consortium/flwr-home"
    flwr = work / "root/opt/appliance-consortium/venv/bin/flwr"
    deadline = 120
    for _ in range(deadline // 3):
        listed = subprocess.run(
            [str(flwr), "supernode", "list", "consortium", "--format", "json"],
            env={**os.environ, "FLWR_HOME": str(home)},
            capture_output=True,
            text=True,
            check=False,
        )
        nodes = json.loads(listed.stdout or "{}").get("nodes", [])
        if any(n["status"] == "online" for n in nodes):
            return
        time.sleep(3)
    pytest.fail(f"no SuperNode online: {listed.stdout[-1000:]} {listed.stderr[-1000:]}")


def test_systemd_analyze_verifies_every_rendered_unit(deployed: Deployed) -> None:
    work, _, _, _ = deployed
    units = sorted((work / "root/etc/systemd/system").glob("appliance-*"))
    assert {u.name for u in units} == {
        p.name.removesuffix(".j2") for p in (ROOT / "systemd").glob("*.j2")
    }
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    serving = (work / "root/etc/systemd/system/appliance-serving.service").read_text()
    assert "ProtectSystem=strict" in serving and "User=appliance" in serving
    round_unit = (work / "root/etc/systemd/system/appliance-round.service").read_text()
    exec_start = next(line for line in round_unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))  # systemd quotes words the same way
    assert argv[argv.index("--run-config") + 1] == "rounds=3"
    assert argv[-1] == "--stream"


def test_rendered_units_carry_the_configured_budgets(deployed: Deployed) -> None:
    work, _, _, _ = deployed
    for unit, (high, most, weight) in UNIT_BUDGETS.items():
        lines = (work / "root/etc/systemd/system" / unit).read_text(encoding="utf-8").splitlines()
        settings = [line for line in lines if line.startswith(("Memory", "CPUWeight="))]
        swap = ["MemorySwapMax=0"] if unit == "appliance-serving.service" else []
        expected = [f"MemoryHigh={high}", f"MemoryMax={most}", *swap, f"CPUWeight={weight}"]
        assert settings == expected, unit


def test_serving_runs_on_the_configured_allocator(deployed: Deployed) -> None:
    work, _, _, _ = deployed
    unit = (work / "root/etc/systemd/system/appliance-serving.service").read_text()
    pid = _pids(work / "root")["appliance-serving"]
    mapped = Path(f"/proc/{pid}/maps").read_text()
    if JEMALLOC.is_file():
        assert f"Environment=LD_PRELOAD={JEMALLOC}" in unit
        assert "Environment=MALLOC_CONF=background_thread:true," in unit
        assert str(JEMALLOC) in mapped  # the running process really uses it
    else:
        assert "Environment=MALLOC_ARENA_MAX=2" in unit and "LD_PRELOAD" not in unit
        assert "libjemalloc" not in mapped


def test_second_run_changes_nothing(deployed: Deployed) -> None:
    _, inventory, _, _ = deployed
    second = _playbook(inventory)
    recap = _recap(second)
    assert recap and all(r["changed"] == 0 for r in recap.values()), second[-6000:]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode("utf-8"))


def _pids(root: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in root.glob("run/*/*.pid")}


def test_a_changed_setting_restarts_the_services_that_ran(deployed: Deployed) -> None:
    """Runs last (it changes the box): a new training window rewrites daemon.toml, so the
    handler restarts serving and the daemon (new pids, serving answers again); the SuperLink,
    whose configuration did not change, keeps running untouched."""
    work, inventory, ports, _ = deployed
    before = _pids(work / "root")
    assert set(before) == {"superlink", "appliance-serving", "appliance-federation"}, before
    output = _playbook(inventory, {"hospital_node_window": "00:00-23:58"})
    assert "Restart through the direct_services role" in output, output[-6000:]
    after = _pids(work / "root")
    assert after["superlink"] == before["superlink"]
    for service in ("appliance-serving", "appliance-federation"):
        assert after[service] != before[service], (service, before, after)
        assert Path(f"/proc/{after[service]}").exists(), service
    assert not Path(f"/proc/{before['appliance-serving']}").exists()
    daemon_toml = work / "root/etc/appliance/daemon.toml"
    assert "23:58" in daemon_toml.read_text(encoding="utf-8")
    result = _analyze_over_mtls(work, ports, "Cisplatin-induced nephrotoxicity.")
    assert result.model_version.startswith("000001")
