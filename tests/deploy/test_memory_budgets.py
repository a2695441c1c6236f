"""The units' memory budgets: preflight's refusals in real `ansible-playbook` runs, the recording
rules the monitoring playbook renders, and the serving memory alert under `promtool test rules`.

The preflight runs stop at the roles' checks (`--tags preflight`: nothing is installed or
started), so each takes seconds and needs no root. The deployment test (test_playbook.py) shows
the budgets in the rendered units and the preflight accepting budgets that fit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from federation.deploy import free_port
from tests.deploy.tools import ANSIBLE, tool

MONITORING = ANSIBLE / "monitoring"
SERVING_BUDGET = re.compile(r'vector\((\d+)\)\s+labels:\s+instance: "([^"]+)"')


def _ansible(args: list[str], extra: dict[str, str]) -> tuple[int, str]:
    """Runs ansible-playbook in ansible/; the exit status and its output, whitespace collapsed."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run(
        [tool("ansible-playbook"), *args, "--extra-vars", json.dumps(extra)],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def _box(work: Path, groups: list[str]) -> Path:
    """An inventory of one local host, `box`, in `groups`; the files the roles check exist."""
    names = (
        "wheel.whl",
        "app.fab",
        "ca.pem",
        "superlink.pem",
        "superlink.key",
        "box.pub",
        "box.key",
    )
    files = {name: work / name for name in names}
    for path in files.values():
        path.touch()
    box = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,
        "consortium_wheel": str(files["wheel.whl"]),
        "consortium_fab": str(files["app.fab"]),
        "consortium_service_manager": "direct",
        "consortium_superlink_port": free_port(),
        "consortium_tls_ca_src": str(files["ca.pem"]),
        "consortium_tls_cert_src": str(files["superlink.pem"]),
        "consortium_tls_key_src": str(files["superlink.key"]),
        "consortium_hospitals": [{"name": "box", "public_key": str(files["box.pub"])}],
        "hospital_node_wheel": str(files["wheel.whl"]),
        "hospital_node_service_manager": "direct",
        "hospital_node_production": False,
        "hospital_node_serving_host": "127.0.0.1",
        "hospital_node_serving_port": free_port(),
        "hospital_node_serving_metrics_port": free_port(),
        "hospital_node_federation_metrics_port": free_port(),
        "hospital_node_supernode_port": free_port(),
        "hospital_node_superlink_ca_src": str(files["ca.pem"]),
        "hospital_node_auth_key_src": str(files["box.key"]),
    }
    inventory = {group: {"hosts": {"box": box}} for group in groups}
    path = work / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2), encoding="utf-8")
    return path


def _memtotal_mib() -> int:
    """MemTotal in MiB, as Ansible's memtotal_mb fact reads it."""
    line = next(
        x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:")
    )
    return int(line.split()[1]) // 1024


def test_preflight_refuses_a_memory_high_not_below_memory_max(tmp_path: Path) -> None:
    # Prepare
    inventory = _box(tmp_path, ["hospitals"])
    equal = {
        "hospital_node_federation_memory_high": "12G",
        "hospital_node_federation_memory_max": "12G",
    }

    # Execute
    rc, output = _ansible(["-i", str(inventory), "site.yml", "--tags", "preflight"], equal)

    # Assert
    assert rc != 0, output[-3000:]
    assert (
        "hospital_node_federation_memory_high=12G must be below "
        "hospital_node_federation_memory_max=12G (appliance-federation.service)"
    ) in output, output[-3000:]


def test_preflight_refuses_budgets_of_both_roles_that_exceed_the_host_memory(
    tmp_path: Path,
) -> None:
    # Prepare: each role's largest budget is 55% of the host, so either role alone fits, both not.
    share = _memtotal_mib() * 55 // 100
    inventory = _box(tmp_path, ["consortium", "hospitals"])
    small = {"memory_high": "256M", "memory_max": "512M"}
    budgets = {
        "consortium_superlink_memory_high": f"{share // 2}M",
        "consortium_superlink_memory_max": f"{share}M",
        "hospital_node_federation_memory_high": f"{share // 2}M",
        "hospital_node_federation_memory_max": f"{share}M",
        **{f"consortium_round_{k}": v for k, v in small.items()},
        **{f"hospital_node_serving_{k}": v for k, v in small.items()},
        **{f"hospital_node_report_{k}": v for k, v in small.items()},
        "hospital_node_work_turn_memory": "256M",
    }

    # Execute
    rc, output = _ansible(["-i", str(inventory), "site.yml", "--tags", "preflight"], budgets)

    # Assert: the consortium's preflight passed; the hospital node's saw both roles' budgets.
    assert rc != 0, output[-3000:]
    failed = output[output.index("PLAY [Hospital edge boxes]") :]
    assert "The MemoryMax budgets on box add up to" in failed, output[-3000:]
    for setting in (
        f"consortium_superlink_memory_max={share}M",
        "consortium_round_memory_max=512M",
        f"hospital_node_federation_memory_max={share}M",
        "hospital_node_serving_memory_max=512M",
        "hospital_node_memory_headroom=1G",
    ):
        assert setting in failed, (setting, failed[-3000:])
    assert f"({_memtotal_mib()} MiB)" in failed


def _turn_budgets(serving_max: int, federation_max: int, turn: int) -> dict[str, str]:
    """A hospital node's budgets in MiB, MemoryHigh a little under each MemoryMax."""
    return {
        "hospital_node_serving_memory_high": f"{serving_max - 64}M",
        "hospital_node_serving_memory_max": f"{serving_max}M",
        "hospital_node_federation_memory_high": f"{federation_max - 64}M",
        "hospital_node_federation_memory_max": f"{federation_max}M",
        "hospital_node_report_memory_high": "256M",
        "hospital_node_report_memory_max": "512M",
        "hospital_node_work_turn_memory": f"{turn}M",
    }


def test_preflight_counts_the_memory_taken_in_turns_once(tmp_path: Path) -> None:
    # Prepare: serving and the federation daemon each get 55% of the host, 40% of it for the
    # export and the round that take turns: 110% - 40% + 512M + headroom fits; 110% would not.
    share, turn = _memtotal_mib() * 55 // 100, _memtotal_mib() * 40 // 100
    inventory = _box(tmp_path, ["hospitals"])

    # Execute
    fits, fits_out = _ansible(
        ["-i", str(inventory), "site.yml", "--tags", "preflight"], _turn_budgets(share, share, turn)
    )
    refused, refused_out = _ansible(
        ["-i", str(inventory), "site.yml", "--tags", "preflight"], _turn_budgets(share, share, 64)
    )

    # Assert
    assert fits == 0, fits_out[-3000:]
    assert refused != 0, refused_out[-3000:]
    assert (
        f"hospital_node_federation_memory_max={share}M, hospital_node_report_memory_max=512M, "
        "less hospital_node_work_turn_memory=64M taken in turns)"
    ) in refused_out, refused_out[-3000:]


def test_preflight_refuses_turn_memory_above_a_units_memory_max(tmp_path: Path) -> None:
    # Prepare
    inventory = _box(tmp_path, ["hospitals"])
    budgets = _turn_budgets(2048, 1024, 1536)

    # Execute
    rc, output = _ansible(["-i", str(inventory), "site.yml", "--tags", "preflight"], budgets)

    # Assert
    assert rc != 0, output[-3000:]
    assert (
        "hospital_node_work_turn_memory=1536M is memory that appliance-serving.service and "
        "appliance-federation.service take in turns, so it must be at most each one's MemoryMax "
        "(hospital_node_serving_memory_max=2048M, hospital_node_federation_memory_max=1024M)"
    ) in output, output[-3000:]


def test_monitoring_playbook_renders_the_committed_budget_rules(tmp_path: Path) -> None:
    # Prepare
    committed = (MONITORING / "memory-budgets.yml").read_text(encoding="utf-8")
    rendered, changed = tmp_path / "rendered.yml", tmp_path / "changed.yml"

    # Execute: the example inventory as it is, then with another serving MemoryHigh
    rc, output = _ansible(["monitoring.yml"], {"monitoring_rules_dest": str(rendered)})
    assert rc == 0, output[-3000:]
    budget = {"monitoring_rules_dest": str(changed), "hospital_node_serving_memory_high": "1536M"}
    rc, output = _ansible(["monitoring.yml"], budget)
    assert rc == 0, output[-3000:]

    # Assert
    assert rendered.read_text(encoding="utf-8") == committed
    assert SERVING_BUDGET.findall(changed.read_text(encoding="utf-8")) == [
        (str(1536 * 2**20), f"hospital-{x}:9300") for x in "abc"
    ]


def test_serving_memory_alert_fires_after_10_minutes_above_90_percent_of_memory_high(
    tmp_path: Path,
) -> None:
    # Prepare: hospital-a at 95% of its budget, hospital-b at 85%, and a target with no budget
    budgets = SERVING_BUDGET.findall((MONITORING / "memory-budgets.yml").read_text("utf-8"))
    high = {instance: int(value) for value, instance in budgets}["hospital-a:9300"]
    rss = high * 95 // 100
    labels = 'job="appliance-serving",instance="{}"'
    series = [
        {"series": f"process_resident_memory_bytes{{{labels.format(i)}}}", "values": f"{v}+0x70"}
        for i, v in (("hospital-a:9300", rss), ("hospital-b:9300", high * 85 // 100))
    ] + [
        {"series": f"up{{{labels.format(i)}}}", "values": "1+0x70"}
        for i in ("hospital-a:9300", "new-box:9300")
    ]
    near = "ApplianceServingMemoryNearBudget"
    spec = {
        "rule_files": [str(MONITORING / "alerts.yml"), str(MONITORING / "memory-budgets.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": near, "exp_alerts": []},
                    {
                        "eval_time": "11m",
                        "alertname": near,
                        "exp_alerts": [_near_budget("hospital-a:9300", rss)],
                    },
                    {
                        "eval_time": "61m",
                        "alertname": "ApplianceServingMemoryBudgetUnknown",
                        "exp_alerts": [_budget_unknown("new-box:9300")],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "memory_alert_test.yml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML

    # Execute
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, check=False
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def _labels(instance: str) -> dict[str, str]:
    return {"severity": "warning", "job": "appliance-serving", "instance": instance}


def _humanize1024(value: float) -> str:
    """Prometheus's humanize1024 template function (Go's %.4g after dividing by 1024s)."""
    prefix = ""
    for unit in ("Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024:
            break
        value, prefix = value / 1024, unit
    return f"{value:.4g}{prefix}"


def _near_budget(instance: str, rss: int) -> dict[str, dict[str, str]]:
    return {
        "exp_labels": _labels(instance),
        "exp_annotations": {
            "summary": f"Serving on {instance} is above 90% of its MemoryHigh",
            "description": (
                f"Resident memory has been {_humanize1024(rss)}B for 10 minutes. Above MemoryHigh"
                " systemd reclaims and throttles serving (slower answers); at MemoryMax it kills"
                " and restarts it. Raise hospital_node_serving_memory_high and _max"
                " (docs/memory-budgets.md) or look for what grows."
            ),
            "runbook_url": "docs/operations.md#applianceservingmemorynearbudget",
        },
    }


def _budget_unknown(instance: str) -> dict[str, dict[str, str]]:
    return {
        "exp_labels": _labels(instance),
        "exp_annotations": {
            "summary": f"No serving memory budget is known for {instance}",
            "description": (
                "memory-budgets.yml has no budget for this target, so"
                " ApplianceServingMemoryNearBudget cannot fire for it: re-render it with"
                " `ansible-playbook monitoring.yml` (the targets must be named as in the"
                " inventory) and reload Prometheus."
            ),
            "runbook_url": "docs/operations.md#applianceservingmemorybudgetunknown",
        },
    }


ROLE_DEFAULTS = ANSIBLE / "roles" / "hospital_node" / "defaults" / "main.yml"
SCALE = ANSIBLE.parent / "benchmarks" / "results" / "scale.json"
BY_BASE = re.compile(r"'(\d+)G' if hospital_node_base_model == 'embedded' else '(\d+)G'")


def _default_gib(variable: str) -> dict[str, int]:
    """The role default of `variable` per base: {"embedded": GiB, "llama-1b-shape": GiB}."""
    line = next(s for s in ROLE_DEFAULTS.read_text().splitlines() if s.startswith(variable + ":"))
    match = BY_BASE.search(line)
    assert match, f"{variable} is not sized per base: {line}"
    return {"embedded": int(match.group(1)), "llama-1b-shape": int(match.group(2))}


def test_the_role_budgets_cover_the_peaks_measured_at_each_size() -> None:
    """Serving's MemoryMax holds serving and the export it runs; the federation daemon's holds a
    node's round (benchmarks/results/scale.md, anonymous peaks; a failed round's too). The memory
    counted once for the two (the export and the round take turns) is no more than serving's
    budget keeps beyond two served versions, nor the daemon's beyond 1 GiB for itself."""
    models = json.loads(SCALE.read_text(encoding="utf-8"))["models"]
    serving_max = _default_gib("hospital_node_serving_memory_max")
    federation_max = _default_gib("hospital_node_federation_memory_max")
    turn = _default_gib("hospital_node_work_turn_memory")
    for name, m in models.items():
        serving = max(s["peak_rss_mb"] for s in m["serve"].values())
        export = max(e["run"]["anon_mb"] for e in m["export"].values())
        node = max(n["peak_anon_mb"] for r in m["rounds"].values() for n in r["nodes"].values())
        assert (serving + export) / 1024 <= serving_max[name], (name, serving, export)
        assert node / 1024 <= federation_max[name], (name, node)
        assert turn[name] <= serving_max[name] - 2 * serving / 1024, (name, serving)
        assert turn[name] <= federation_max[name] - 1, name
