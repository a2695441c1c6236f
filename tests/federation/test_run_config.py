"""pyproject's `[tool.flwr.app.config]` and `FederationConfig` describe the same run."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from federation.config import FederationConfig, from_run_config, to_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _app_config() -> dict[str, object]:
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return dict(data["tool"]["flwr"]["app"]["config"])


def test_every_pyproject_key_is_a_field_and_every_field_a_key():
    # Prepare
    keys = set(_app_config())
    names = {f.name for f in fields(FederationConfig)}

    # Execute
    as_fields = {key.replace(".", "_").replace("-", "_") for key in keys}

    # Assert
    assert sorted(as_fields - names) == [], "pyproject keys without a FederationConfig field"
    assert sorted(names - as_fields) == [], "FederationConfig fields missing from pyproject"


def test_pyproject_values_are_the_dataclass_defaults():
    # Prepare
    table = _app_config()

    # Execute
    from_pyproject = from_run_config(table)
    defaults = to_run_config(FederationConfig())

    # Assert: key by key, so a drift names the key and both values
    drift = {
        key: (table.get(key), defaults.get(key))
        for key in sorted(set(table) | set(defaults))
        if table.get(key) != defaults.get(key)
    }
    assert drift == {}, "pyproject value vs FederationConfig default"
    assert from_pyproject == FederationConfig()
