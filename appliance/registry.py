"""The on-disk model registry: where federation publishes packages and serving finds `current`.

Layout (one directory per box, e.g. /var/lib/appliance/registry)::

    versions/<version>/          one model package per version (package.json + weights.safetensors)
    versions/<version>.partial/  a version being written; renamed to versions/<version> when whole
    current -> versions/<v>      a relative symlink; moved atomically (rename over the old link)
    history.jsonl                one JSON line per publish / promote / reject, with the reason

A writer that dies part way leaves at most a `.partial` directory (never listed, never promoted,
its number never reused) or a whole version that `current` does not point at; files and the
directories that name them are flushed to disk before each rename, so a power cut does the same.

Versions are `NNNNNN-<label>`; the counter orders them, the label says where they came from.
Serving only reads (`current`); the federation daemon publishes and promotes. The two packages
never import each other: this directory is their only contact.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

VERSIONS = "versions"
CURRENT = "current"
HISTORY = "history.jsonl"
PARTIAL = ".partial"
_VERSION = re.compile(r"^(\d{6})-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _is_version(name: str) -> bool:
    return bool(_VERSION.match(name)) and not name.endswith(PARTIAL)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a rename is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


class RegistryError(ValueError):
    """The registry or a version in it is missing or malformed."""


@dataclass(frozen=True)
class RegistryVersion:
    version: str
    path: Path

    @property
    def partial(self) -> Path:
        """Where the version is written before it is renamed to `path`."""
        return self.path.with_name(self.path.name + PARTIAL)


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
        """A fresh, not yet existing version: write it whole under `.partial`, rename it to
        `.path` (`publish` does both), then `promote` it."""
        if not _LABEL.match(label):
            raise RegistryError(f"version label {label!r}: use letters, digits, '.', '_', '-'")
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        # Half-written versions count too, so a crashed writer's number is never reused.
        taken = [int(p.name[:6]) for p in (self.root / VERSIONS).iterdir() if p.name[:6].isdigit()]
        number = max(taken + [0]) + 1
        version = f"{number:06d}-{label}"
        return RegistryVersion(version, self.root / VERSIONS / version)

    def publish(self, source: str | Path, label: str, reason: str = "") -> RegistryVersion:
        """Copy the package directory `source` in as a new version; it appears whole or not at
        all. Not promoted: `current` is unchanged."""
        slot = self.allocate(label)
        shutil.copytree(source, slot.partial)
        _fsync_tree(slot.partial)
        slot.partial.rename(slot.path)
        _fsync(slot.path.parent)
        self.record("publish", slot.version, reason or f"published from {Path(source).name}")
        return slot

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
        _fsync(self.root)
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
        line = json.dumps(entry, sort_keys=True) + "\n"
        with (self.root / HISTORY).open("a+b") as handle:
            _drop_unfinished_line(handle)
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def history(self) -> list[dict[str, Any]]:
        """All events, oldest first. An event is a line ending in a newline: a line a dying
        writer left unfinished is not one (the next `record` cuts it off)."""
        path = self.root / HISTORY
        if not path.exists():
            return []
        lines = path.read_bytes().split(b"\n")[:-1]
        events = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError as err:
                raise RegistryError(f"{path}:{number}: not a JSON event ({err})") from err
        return events


def _drop_unfinished_line(handle: BinaryIO) -> None:
    """Truncate an append-mode file back to its last newline (after a writer died mid-line)."""
    handle.seek(0)
    text = handle.read()
    if text and not text.endswith(b"\n"):
        handle.truncate(text.rfind(b"\n") + 1)
