"""Render docs/configuration.md from the config dataclasses' fields and their `help` metadata.

Run `.venv/bin/python docs/configuration_gen.py` after changing a config field; `--check` exits 1
when the committed file differs (tests/test_docs.py does the same check).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from appliance.config import ApplianceConfig, ModelConfig, TrainConfig  # noqa: E402
from federation.config import FederationConfig  # noqa: E402
from federation.daemon_config import DaemonConfig  # noqa: E402
from serving.config import ServingConfig  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration.md"


@dataclass(frozen=True)
class Table:
    """One documented table: where it is read from, and the dataclass that validates it."""

    title: str
    intro: str
    cls: type
    key: Callable[[str], str] = str  # field name -> the key an operator writes
    skip: tuple[str, ...] = ()  # fields documented as their own table


def _kebab(name: str) -> str:
    return name.replace("_", "-")


TABLES = (
    Table(
        "Core: top level of `--config FILE.toml`",
        "Read by `appliance train`, `evaluate`, `annotate` and `info` "
        "(`appliance/config.py`, `ApplianceConfig`); flags override the file.",
        ApplianceConfig,
        skip=("model", "train"),
    ),
    Table(
        "Core: `[model]`",
        "Which base model is loaded and how (`ModelConfig`).",
        ModelConfig,
    ),
    Table(
        "Core: `[train]`",
        "How the selected layers are trained (`TrainConfig`).",
        TrainConfig,
    ),
    Table(
        "Serving: `[serving]` in `serving.toml`",
        "Read by `appliance serve --config serving.toml` (`serving/config.py`, `ServingConfig`); "
        "flags override the file. Exactly one of `package` and `registry` is set.",
        ServingConfig,
    ),
    Table(
        "Federation daemon: `[daemon]` in `daemon.toml`",
        "Read by `appliance federate daemon|status|promote --config daemon.toml` "
        "(`federation/daemon_config.py`, `DaemonConfig`). Keys without a default are required.",
        DaemonConfig,
    ),
    Table(
        "Federated run: `[tool.flwr.app.config]` and `flwr run --run-config`",
        "The consortium's run config (`federation/config.py`, `FederationConfig`), converted once "
        "by `federation.config.from_run_config`. Keys are kebab-case; `pyproject.toml` holds the "
        'defaults, `flwr run . <federation> --run-config "key=value ..."` overrides them.',
        FederationConfig,
        key=_kebab,
    ),
)

HEADER = """# Configuration reference

Generated from the config dataclasses by `docs/configuration_gen.py`; do not edit by hand
(tests/test_docs.py fails when this file and the code disagree). Every table refuses unknown keys
with an error that names the file and the key, and every value is validated when it is loaded.
"""


class MissingHelp(ValueError):
    """A config field without `metadata={"help": ...}`."""


def help_of(cls: type, f: dataclasses.Field[Any]) -> str:
    text = str(f.metadata.get("help", "")).strip()
    if not text:
        raise MissingHelp(f"{cls.__name__}.{f.name}: no help text in its field metadata")
    return text


def default_of(f: dataclasses.Field[Any], key: Callable[[str], str]) -> str:
    """The default as an operator would write it (TOML), or `required`."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return _toml(value, comma_lists=key is _kebab)


def _toml(value: Any, comma_lists: bool) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int | float):
        return f"`{value!r}`"
    if isinstance(value, tuple | list):
        if comma_lists:
            return f'`"{",".join(map(str, value))}"`'
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value!r}`"
    return f'`"{value}"`'


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> list[str]:
    lines = [f"## {table.title}", "", table.intro, ""]
    lines += ["| key | type | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(table.cls):
        if f.name in table.skip:
            continue
        cells = (
            f"`{table.key(f.name)}`",
            f"`{_cell(str(f.type))}`",
            _cell(default_of(f, table.key)),
            _cell(help_of(table.cls, f)),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render(tables: Sequence[Table] = TABLES) -> str:
    """The whole reference as Markdown; raises MissingHelp when a field has no help."""
    lines = [HEADER]
    for table in tables:
        lines += render_table(table)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text
        if not same:
            print(f"{OUTPUT} is out of date: run python docs/configuration_gen.py", file=sys.stderr)
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
