"""A benchmark's finished rows, persisted in a JSON file keyed by what they measured.

A grid of long rows is filled over several invocations (and several machines): a row already in
the file is skipped, and the file is read again before each write, so two invocations filling
different rows of one file keep each other's rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.core import machine


class RowStore:
    def __init__(self, path: Path, command: str) -> None:
        self.path, self.command = path, command

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}

    def has(self, key: str) -> bool:
        return key in self.read().get("rows", {})

    def add(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
        """Record `row` under `key` with the command, machine and date; the whole store."""
        row |= {"command": self.command, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
        store = self.read()
        store.setdefault("rows", {})[key] = row
        self.path.write_text(json.dumps(store, indent=2), encoding="utf-8")
        return store
