"""Deployment assets checked with the real tools: ansible-lint, promtool, the Grafana JSON.

Outside CI a missing tool skips its test; `.ci/run` sets APPLIANCE_REQUIRE_DEPLOY_TOOLS=1, where a
missing tool is a failure (CI installs ansible-core/ansible-lint with the dev extras and
Debian's prometheus package for promtool through `.ci/setup`).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.deploy.tools import ANSIBLE, ROOT, tool

MONITORING = ANSIBLE / "monitoring"


def test_ansible_lint_production_profile_is_clean() -> None:
    lint = tool("ansible-lint")
    done = subprocess.run(
        [lint, "--offline", "--profile", "production", "--format", "pep8"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "production" in done.stdout + done.stderr


def test_promtool_accepts_the_scrape_config_and_the_alert_rules() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml", "memory-budgets.yml"],
    ):
        done = subprocess.run(
            [promtool, *args], cwd=MONITORING, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr


def test_alert_rules_cover_what_operators_asked_for() -> None:
    text = (MONITORING / "alerts.yml").read_text(encoding="utf-8")
    for alert in (
        "ApplianceServiceDown",
        "ApplianceNerErrorRate",
        "ApplianceNerLatencyP99",
        "AppliancePrivacyBudget80",
        "ApplianceRoundFailed",
        "ApplianceNoSuccessfulRound48h",
        "ApplianceServingMemoryNearBudget",
        "ApplianceServingMemoryBudgetUnknown",
    ):
        assert f"alert: {alert}" in text


def test_dashboard_and_alerts_query_only_metrics_the_exporters_define() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    used = {m for e in exprs for m in re.findall(r"\b(appliance_[a-z0-9_]+)", e)}
    sources = (ROOT / "serving" / "metrics.py").read_text() + (
        ROOT / "federation" / "exporter.py"
    ).read_text()
    defined = set(re.findall(r'"(appliance_[a-z0-9_]+)"', sources))
    suffixes = ("_total", "_bucket", "_sum", "_count")
    unknown = {
        m
        for m in used
        if m not in defined and not any(m.endswith(s) and m[: -len(s)] in defined for s in suffixes)
    }
    assert not unknown, f"dashboard uses undefined metrics: {sorted(unknown)}"


def test_role_templates_are_the_systemd_folder_units() -> None:
    units = sorted(p.name for p in (ROOT / "systemd").glob("*.j2"))
    linked = sorted(
        p.name
        for role in ("hospital_node", "consortium")
        for p in (ANSIBLE / "roles" / role / "templates").glob("appliance-*.j2")
    )
    assert units == linked
    for role in ("hospital_node", "consortium"):
        for path in (ANSIBLE / "roles" / role / "templates").glob("appliance-*.j2"):
            assert path.is_symlink() and path.resolve().parent == (ROOT / "systemd").resolve()


def test_units_are_hardened() -> None:
    for path in Path(ROOT / "systemd").glob("*.service.j2"):
        text = path.read_text(encoding="utf-8")
        for line in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "MemoryHigh=",
            "MemoryMax=",
            "CPUWeight=",
            "User=",
        ):
            assert line in text, f"{path.name} lacks {line}"
        if "Type=simple" in text:
            assert "Restart=on-failure" in text, path.name
