"""Find the deployment tools; skip without them unless CI requires them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
ANSIBLE = ROOT / "ansible"
REQUIRED = os.environ.get("APPLIANCE_REQUIRE_DEPLOY_TOOLS") == "1"


def tool(name: str) -> str:
    """Path of a command-line tool: next to this Python first, then on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        if REQUIRED:
            pytest.fail(f"{name} is required here (APPLIANCE_REQUIRE_DEPLOY_TOOLS=1) but missing")
        pytest.skip(f"{name} is not installed (bash .ci/setup installs it)")
    return found


def require_root() -> None:
    """The playbook creates service users and runs services as them: it needs root."""
    if os.geteuid() != 0:
        if REQUIRED:
            pytest.fail("the deployment test needs root (service users) and CI requires it")
        pytest.skip("the deployment test needs root (it creates service users)")
