"""A hospital's round journal: one JSON line per federation event, read by the exporter.

The ClientApp may run in a different process than the daemon (Flower isolates it), so events go
through this append-only file rather than through memory. Only ids, counts and scores are
allowed in: field names are whitelisted and strings are short, so no note text can end up here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS = frozenset(
    {"round_started", "round_completed", "round_failed", "round_declined", "promotion"}
)
FIELDS = frozenset(
    {
        "server_round",
        "node",
        "run_id",
        "loss",
        "f1",
        "num_examples",
        "bytes_sent",
        "bytes_received",
        "eps_spent",
        "eps_remaining",
        "eps_budget",
        "dp_noise",
        "dp_clipped_share",
        "dp_median_grad_norm",
        "reason",
        "outcome",
        "version",
        "current_f1",
        "candidate_f1",
        "duration_s",
        "mode",
    }
)
MAX_STRING = 200


class JournalError(ValueError):
    """An event or field the journal does not accept."""


@dataclass(frozen=True)
class JournalEntry:
    time: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


class RoundJournal:
    """Append-only JSONL; each line is written with one `write` so readers see whole lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, event: str, **fields: Any) -> JournalEntry:
        if event not in EVENTS:
            raise JournalError(f"unknown journal event {event!r}; one of {sorted(EVENTS)}")
        for name, value in fields.items():
            if name not in FIELDS:
                raise JournalError(f"journal field {name!r} is not allowed (ids and numbers only)")
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise JournalError(f"journal field {name!r} is longer than {MAX_STRING} chars")
            if not isinstance(value, str | int | float | bool) and value is not None:
                raise JournalError(f"journal field {name!r} must be a scalar")
        entry = JournalEntry(_now(), event, dict(fields))
        line = json.dumps({"time": entry.time, "event": event, **fields}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return entry


class JournalReader:
    """Reads new complete lines since the last call (a torn last line waits for its end)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def new_entries(self) -> Iterator[JournalEntry]:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            entry = _parse(raw)
            if entry is not None:
                yield entry


def read_journal(path: str | Path) -> list[JournalEntry]:
    return list(JournalReader(path).new_entries())


def _parse(raw: bytes) -> JournalEntry | None:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a line cut by a crash mid-write: skipped, the rest is still read
    if not isinstance(obj, dict) or obj.get("event") not in EVENTS:
        return None
    time, event = str(obj.pop("time", "")), str(obj.pop("event"))
    return JournalEntry(time, event, obj)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
