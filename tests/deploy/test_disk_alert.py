"""The state-disk alert under `promtool test rules`: it fires after 15 minutes above 80% full,
before the disk reaches 85%, and not for a box below 80%."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ANSIBLE, tool

MONITORING = ANSIBLE / "monitoring"
ALERT = "ApplianceStateDiskFilling"


def _rule() -> dict[str, Any]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    return next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT)


def _render(template: str, labels: dict[str, str], value: float) -> str:
    """The two template forms the alert's annotations use: `$labels.x` and humanizePercentage
    (Go's %.4g of value * 100)."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    return text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")


def test_disk_alert_fires_after_15_minutes_above_80_percent(tmp_path: Path) -> None:
    # Prepare: hospital-a's disk 82% full, hospital-b's 79%
    series_labels = {
        box: {"job": "appliance-federation", "instance": f"{box}:9310", "hospital": box}
        for box in ("hospital-a", "hospital-b")
    }
    series = [
        {
            "series": "appliance_state_disk_used_ratio{"
            + ",".join(f'{k}="{v}"' for k, v in series_labels[box].items())
            + "}",
            "values": f"{ratio}+0x30",
        }
        for box, ratio in (("hospital-a", 0.82), ("hospital-b", 0.79))
    ]
    labels = {**series_labels["hospital-a"], "severity": "warning"}
    annotations = {k: _render(v, labels, 0.82) for k, v in _rule()["annotations"].items()}
    spec = {
        "rule_files": [str(MONITORING / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": ALERT, "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": ALERT,
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "disk_alert_test.yml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML

    # Execute
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, check=False
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
    assert annotations["summary"] == "The appliance disk at hospital-a is 82% full"
