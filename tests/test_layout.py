"""Each package keeps to its own room: the product wheel holds appliance, serving and federation
and no demo code; the packages import each other only through public modules, never a CLI."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("appliance", "serving", "federation")
# Which of our other top-level packages each product package may import.
MAY_IMPORT = {"appliance": set(), "serving": {"appliance"}, "federation": {"appliance"}}
OURS = {*PRODUCT, "demo", "tests", "benchmarks"}
PARSER_PRIVATES = {"_actions", "_option_string_actions", "_subparsers"}


def imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, a module named `module`
    (`from x import y` counts as x and x.y: y may be a module)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = module.split(".")[: -node.level] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found += [(node.lineno, name)]
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str) -> list[str]:
    """What `source` (the module `module` of a product package) must not do."""
    package, tree, bad = module.split(".")[0], ast.parse(source), []
    for line, name in imported(tree, module):
        parts = name.split(".")
        if parts[0] == package:
            continue
        if parts[0] in OURS and parts[0] not in MAY_IMPORT[package]:
            bad.append(f"{module}:{line}: imports {name} ({package} may not import {parts[0]})")
        elif parts[1:2] == ["cli"]:
            bad.append(f"{module}:{line}: imports {name}, another package's command line")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PARSER_PRIVATES:
            bad.append(f"{module}:{node.lineno}: reaches into argparse's {node.attr}")
    return bad


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_product_packages_meet_only_through_public_modules() -> None:
    bad = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += violations(path.read_text(encoding="utf-8"), _module(path))
    assert bad == []


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("serving.cli", "from appliance.cli import CommandError", "another package's command"),
        ("federation.x", "from appliance import cli", "another package's command line"),
        ("appliance.x", "import serving.client", "appliance may not import serving"),
        ("federation.x", "def f():\n    from serving import client", "may not import serving"),
        ("federation.x", "from demo.plan import DP_RECIPE", "federation may not import demo"),
        ("serving.cli", "def f(p):\n    p._actions.clear()", "reaches into argparse"),
    ],
)
def test_the_rules_catch_what_they_forbid(module: str, source: str, message: str) -> None:
    assert any(message in v for v in violations(source, module))


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("serving.cli", "from appliance.exits import CommandError"),
        ("federation.cli", "from .journal import read_journal"),
        ("serving.backends.base", "from ..config import ServingConfig"),
        ("appliance.cli", "from appliance import cert_commands"),
    ],
)
def test_the_rules_allow_public_modules(module: str, source: str) -> None:
    assert violations(source, module) == []


def _source_copy(dest: Path) -> Path:
    """The files a clone would have (tracked and new, not ignored), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.timeout(600)
def test_the_product_wheel_holds_no_demo(tmp_path: Path) -> None:
    # Prepare: build in a copy, so no build/ or egg-info of this checkout leaks into the wheel
    source = _source_copy(tmp_path / "src")
    assert (source / "demo" / "cli.py").exists()
    # Execute
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, check=True, timeout=540,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # Assert
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(PRODUCT)
    assert {"appliance/pki.py", "serving/cli.py", "federation/deploy.py"} <= set(names)
    assert [n for n in names if re.search(r"(^|/)demo[^/]*(\.py|/)", n)] == []
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "demo" not in zipfile.ZipFile(wheel).read(entry_points).decode()
