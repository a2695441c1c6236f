"""The on-disk model registry: where federation publishes packages and serving finds `current`.

Layout (one directory per box, e.g. /var/lib/appliance/registry)::

    versions/<version>/      one model package per version (package.json + weights.safetensors)
    current -> versions/<v>  a relative symlink; moved atomically (rename over the old link)
    history.jsonl            one JSON line per publish / promote / reject, with the reason

Versions are `NNNNNN-<label>`; the counter orders them, the label says where they came from.
Serving only reads (`current`); the federation daemon publishes and promotes. The two packages
never import each other: this directory is their only contact.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSIONS = "versions"
CURRENT = "current"
HISTORY = "history.jsonl"
_VERSION = re.compile(r"^(\d{6})-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _is_version(name: str) -> bool:
    return bool(_VERSION.match(name)) and not name.endswith(".partial")


class RegistryError(ValueError):
    """The registry or a version in it is missing or malformed."""


@dataclass(frozen=True)
class RegistryVersion:
    version: str
    path: Path


class ModelRegistry:
    """A directory of model package versions with one atomically moved `current` pointer."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """All complete versions, oldest first (a `.partial` directory is not a version)."""
        folder = self.root / VERSIONS
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _is_version(p.name))

    def path(self, version: str) -> Path:
        if not _is_version(version):
            raise RegistryError(f"{version!r} is not a registry version (NNNNNN-label)")
        path = self.root / VERSIONS / version
        if not path.is_dir():
            raise RegistryError(f"{self.root}: no version {version}")
        return path

    def allocate(self, label: str) -> RegistryVersion:
        """A fresh, not yet existing version path; write a package there, then `promote`."""
        if not _LABEL.match(label):
            raise RegistryError(f"version label {label!r}: use letters, digits, '.', '_', '-'")
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        # Half-written versions count too, so a crashed writer's number is never reused.
        taken = [int(p.name[:6]) for p in (self.root / VERSIONS).iterdir() if p.name[:6].isdigit()]
        number = max(taken + [0]) + 1
        version = f"{number:06d}-{label}"
        return RegistryVersion(version, self.root / VERSIONS / version)

    def current(self) -> RegistryVersion | None:
        """The version `current` points at, or None when nothing was promoted yet."""
        link = self.root / CURRENT
        if not link.is_symlink():
            return None
        version = Path(os.readlink(link)).name
        path = self.root / VERSIONS / version
        if not path.is_dir():
            raise RegistryError(f"{link} points at {version}, which does not exist")
        return RegistryVersion(version, path)

    def promote(self, version: str, reason: str, **details: Any) -> RegistryVersion:
        """Point `current` at `version` atomically; readers see the old or the new, never none."""
        path = self.path(version)
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(Path(VERSIONS) / version)
        tmp.replace(self.root / CURRENT)
        self.record("promote", version, reason, **details)
        return RegistryVersion(version, path)

    def record(self, event: str, version: str, reason: str, **details: Any) -> None:
        """Append one event (publish, promote, reject, ...) to history.jsonl."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "event": event,
            "version": version,
            "reason": reason,
            **details,
        }
        with (self.root / HISTORY).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
