"""The nightly daemon: window logic, supervising a real child process, config validation."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from appliance.registry import ModelRegistry
from federation.daemon import NightlyDaemon
from federation.daemon_config import TimeWindow, load_daemon_config, node_privacy
from federation.journal import RoundJournal
from tests.federation.helpers import daemon_config, tiny_config

SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")
CRASHER = (sys.executable, "-c", "raise SystemExit(3)")


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, 22, hour, minute)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [("01:00-05:00", [1, 4], [0, 5, 12]), ("22:00-04:00", [22, 23, 0, 3], [4, 12, 21])],
)
def test_window_contains(window: str, inside: list[int], outside: list[int]):
    parsed = TimeWindow.parse(window)
    assert all(parsed.contains(_at(h)) for h in inside)
    assert not any(parsed.contains(_at(h)) for h in outside)


def test_window_change_times():
    window = TimeWindow.parse("22:00-04:00")
    assert window.seconds_until_change(_at(21, 30)) == 30 * 60
    assert window.seconds_until_change(_at(23)) == 5 * 3600


def test_bad_windows_and_configs_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="use HH:MM-HH:MM"):
        TimeWindow.parse("1am-5am")
    with pytest.raises(ValueError, match="empty"):
        TimeWindow.parse("02:00-02:00")
    with pytest.raises(ValueError, match="only allowed to a loopback"):
        daemon_config(tmp_path, superlink="10.0.0.5:9092")
    with pytest.raises(ValueError, match="root_certificates is required"):
        daemon_config(tmp_path, insecure=False)
    with pytest.raises(ValueError, match="may not override"):
        daemon_config(tmp_path, node_config={"notes": "/elsewhere"})


def test_config_file_errors_name_the_file_and_key(tmp_path: Path):
    path = tmp_path / "daemon.toml"
    path.write_text('[daemon]\nhospital = "a"\ncolour = "red"\n')
    unknown = r"daemon.toml \[daemon\]: unknown key\(s\) \['colour'\]; known: \[.*'hospital'"
    with pytest.raises(ValueError, match=unknown):
        load_daemon_config(path)
    path.write_text("[daemon\n")
    with pytest.raises(ValueError, match=r"daemon.toml: cannot read daemon config: invalid TOML"):
        load_daemon_config(path)


def test_supernode_command_carries_tls_auth_and_nodedaemon_config(tmp_path: Path):
    cfg = daemon_config(
        tmp_path,
        insecure=False,
        superlink="link.consortium.example:9092",
        root_certificates=tmp_path / "ca.pem",
        auth_private_key=tmp_path / "node.key",
    )
    cmd = cfg.command()
    assert cmd[0].endswith("flower-supernode") and "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node.key")
    node_config = cmd[cmd.index("--node-config") + 1]
    assert f'notes="{tmp_path / "notes.jsonl"}"' in node_config
    assert 'hospital="hospital-a"' in node_config and "tolerance=0.01" in node_config
    parsed = parse_config_args([node_config])  # as the SuperNode reads it
    assert parsed["require-dp"] is True and parsed["epsilon-budget"] == 8.0  # the defaults
    lax = daemon_config(tmp_path, require_dp=False, epsilon_budget=4.0).command()
    parsed = parse_config_args([lax[lax.index("--node-config") + 1]])
    assert parsed["require-dp"] is False and parsed["epsilon-budget"] == 4.0


def test_a_hospitals_policy_caps_the_budget_and_can_require_dp(tiny_llama: Path):
    run = tiny_config(tiny_llama, dp=True, dp_epsilon_budget=16.0)
    cfg, refusal = node_privacy(run, {"epsilon-budget": 4.0, "require-dp": True})
    assert cfg.dp_epsilon_budget == 4.0 and refusal is None
    assert cfg == replace(run, dp_epsilon_budget=4.0)
    cfg, refusal = node_privacy(replace(run, dp_epsilon_budget=2.0), {"epsilon-budget": 4.0})
    assert cfg.dp_epsilon_budget == 2.0 and refusal is None  # the lower of the two holds
    plain = replace(run, dp=False)
    assert node_privacy(plain, {"require-dp": False}) == (plain, None)
    for required in (True, "true"):
        _, refusal = node_privacy(plain, {"require-dp": required})
        assert refusal == (
            "this hospital trains only with DP-SGD (require_dp); the run has dp = false"
        )
    with pytest.raises(ValueError, match="epsilon_budget 0.0: must be > 0"):
        daemon_config(Path("/tmp"), epsilon_budget=0.0)


def test_child_runs_only_inside_the_window(tmp_path: Path):
    now = {"t": _at(12)}
    cfg = daemon_config(tmp_path, supernode_command=SLEEPER)
    daemon = NightlyDaemon(cfg, clock=lambda: now["t"])
    daemon.tick()
    assert daemon.child is None
    now["t"] = _at(2)
    daemon.tick()
    assert daemon.running
    child = daemon.child
    now["t"] = _at(6)
    daemon.tick()
    assert not daemon.running and child is not None and child.returncode is not None
    assert (tmp_path / "state" / "supernode.log").exists()


def test_a_crashed_child_is_restarted(tmp_path: Path):
    daemon = NightlyDaemon(daemon_config(tmp_path, supernode_command=CRASHER), clock=lambda: _at(2))
    daemon.tick()
    first = daemon.child
    assert first is not None
    first.wait(timeout=30)
    daemon.tick()
    assert daemon.child is not None and daemon.child is not first
    restarts = daemon.metrics.supernode_restarts.labels("hospital-a")._value.get()
    assert restarts == 1
    daemon.stopping.set()
    daemon.stop_child()


def test_run_stops_the_child_on_request(tmp_path: Path):
    daemon = NightlyDaemon(
        daemon_config(tmp_path, supernode_command=SLEEPER, poll_s=0.05), clock=lambda: _at(2)
    )
    import threading

    thread = threading.Thread(target=daemon.run)
    thread.start()
    deadline = time.monotonic() + 20
    while not daemon.running and time.monotonic() < deadline:
        time.sleep(0.05)
    child = daemon.child
    assert child is not None
    daemon.stopping.set()
    thread.join(timeout=40)
    assert not thread.is_alive() and child.poll() is not None


def test_a_node_whose_ledger_was_lost_refuses_to_start(tmp_path: Path):
    # Prepare: a journal with a round that spent privacy budget, and no ledger
    cfg = daemon_config(tmp_path, supernode_command=SLEEPER)
    RoundJournal(cfg.journal).record(
        "round_completed", node="hospital-a", server_round=3, eps_spent=1.2, eps_remaining=6.8
    )

    # Execute / Assert
    with pytest.raises(ValueError, match="restore privacy-ledger.json from backup") as refused:
        NightlyDaemon(cfg)
    assert str(cfg.ledger) in str(refused.value) and "round 3" in str(refused.value)
    cfg.ledger.write_text('{"delta": 1e-05, "history": [[1.0, 0.1, 10]]}')
    assert NightlyDaemon(cfg).child is None  # restored: it starts


def test_dp_versions_in_the_registry_count_as_past_spend(tiny_package: Path, tmp_path: Path):
    # Prepare: a federated DP model in the registry, no journal, no ledger
    cfg = daemon_config(tmp_path, supernode_command=SLEEPER)
    package = tmp_path / "package"
    shutil.copytree(tiny_package, package)
    meta = json.loads((package / "package.json").read_text())
    meta["training"] = {"federated": True, "dp": True}
    (package / "package.json").write_text(json.dumps(meta))
    version = ModelRegistry(cfg.registry).publish(package, "round-1").version

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"registry .*{version}.*privacy-ledger.json from backup"):
        NightlyDaemon(cfg)


def test_rounds_without_dp_need_no_ledger(tiny_package: Path, tmp_path: Path):
    # Prepare: plain rounds in the journal and a plain model in the registry, no ledger
    cfg = daemon_config(tmp_path, supernode_command=SLEEPER)
    RoundJournal(cfg.journal).record("round_completed", node="hospital-a", server_round=1)
    ModelRegistry(cfg.registry).publish(tiny_package, "round-1")

    # Execute
    daemon = NightlyDaemon(cfg)

    # Assert
    assert daemon.child is None and not cfg.ledger.exists()
