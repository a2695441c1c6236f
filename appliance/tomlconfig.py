"""The one TOML reader of the appliance's config files: errors name the file, table and keys."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The parsed file. An unreadable file or invalid TOML raises `ValueError` naming the file,
    what it was read as (`what`, e.g. "daemon config") and the cause (line and column)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{source}: cannot read {what}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: cannot read {what}: not UTF-8 text ({err.reason})") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: cannot read {what}: invalid TOML: {err}") from err


def table(data: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    """The `[name]` table of parsed TOML (empty when absent); not a table is an error."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: [{name}] must be a table, got {type(value).__name__}")
    return dict(value)


def check_keys(values: Mapping[str, Any], cls: type, where: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls`; the error names `where` (file and
    table, e.g. "daemon.toml [daemon]"), the unknown keys and the known ones."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
