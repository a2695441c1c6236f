"""The on-disk model registry: where federation publishes packages and serving finds `current`.

Layout (one directory per box, e.g. /var/lib/appliance/registry)::

    versions/<version>/          one model package per version (package.json + weights.safetensors)
    versions/<version>.partial/  a version being written; renamed to versions/<version> when whole
    versions/<version>.removing/ a version being removed by `prune` (gone at the next prune)
    current -> versions/<v>      a relative symlink; moved atomically (rename over the old link)
    history.jsonl                one JSON line per publish / promote / reject / remove + reason

A writer that dies part way leaves at most a `.partial` directory (never listed, never promoted,
its number never reused) or a whole version that `current` does not point at; files and the
directories that name them are flushed to disk before each rename, so a power cut does the same.

Versions are `NNNNNN-<label>`; the counter orders them, the label says where they came from.
Serving only reads (`current`); the federation daemon publishes, promotes and prunes. The two
packages never import each other: this directory is their only contact.

Retention (`prune`) keeps `current`, the previous promoted version (the rollback target), the
newest N versions, and any version a reader holds: a reader holds a shared `flock` on the
version's directory while it loads it (`loading`), which needs no write access and ends when the
reader closes it or dies. A version is removed under an exclusive lock, by renaming it to
`.removing` first, so a reader sees it whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

VERSIONS = "versions"
CURRENT = "current"
HISTORY = "history.jsonl"
PARTIAL = ".partial"
REMOVING = ".removing"
KEEP_VERSIONS = 7  # newest versions `prune` keeps besides current and previous
PARTIAL_MAX_AGE_S = 3600.0  # an unfinished publish older than this is a dead writer's
# Serving's ONNX exports (<state_dir>/exports/<backend>-<key>/) record in this file, under
# "package", the version directory they were exported from.
EXPORT_INFO = "export.json"
_VERSION = re.compile(r"^(\d{6})-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _is_version(name: str) -> bool:
    return bool(_VERSION.match(name)) and not name.endswith((PARTIAL, REMOVING))


def check_keep(keep: int, name: str = "keep") -> int:
    """How many newest versions to keep: at least 1, so a just-published candidate stays."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{name} must be a whole number of versions >= 1, got {keep!r}")
    return keep


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


@dataclass(frozen=True)
class PruneResult:
    """What one `prune` did."""

    removed: tuple[str, ...]  # versions removed
    held: tuple[str, ...]  # due for removal, left because a reader held them or `current` moved
    leftovers: tuple[str, ...]  # unfinished publishes and removals cleaned up
    exports: tuple[str, ...]  # ONNX export directories whose version is gone
    kept: tuple[str, ...]  # the versions left

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in asdict(self).items()}


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
        if not _LABEL.match(label) or label.endswith((PARTIAL, REMOVING)):
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
        """Point `current` at `version` atomically; readers see the old or the new, never none.
        The version is held meanwhile, so a concurrent `prune` cannot remove it."""
        with self.loading(version) as held:
            tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(Path(VERSIONS) / version)
            tmp.replace(self.root / CURRENT)
            _fsync(self.root)
        self.record("promote", version, reason, **details)
        return held

    @contextmanager
    def loading(self, version: str) -> Iterator[RegistryVersion]:
        """Hold `version` while reading it: `prune` leaves a held version alone. The hold is a
        shared flock on the version's directory, gone on exit or when the holder dies."""
        path = self.path(version)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise RegistryError(f"{self.root}: no version {version}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune renames it away
            if not _still_at(fd, path):
                raise RegistryError(f"{self.root}: version {version} was removed")
            yield RegistryVersion(version, path)
        finally:
            os.close(fd)

    def previous(self) -> str | None:
        """The version promoted before `current` and still here: where a rollback goes."""
        current = self.current()
        now = current.version if current else None
        have = set(self.versions())
        for event in reversed(self.history()):
            version = event.get("version")
            if event.get("event") == "promote" and version != now and version in have:
                return str(version)
        return None

    def size_bytes(self, version: str | None = None) -> int:
        """Bytes of one version's files, or of all of versions/ (unfinished writes included)."""
        return _tree_bytes(self.path(version) if version else self.root / VERSIONS)

    def prune(
        self,
        keep: int = KEEP_VERSIONS,
        protect: Iterable[str] = (),
        exports: Path | None = None,
        now: float | None = None,
    ) -> PruneResult:
        """Remove every version but current, previous, the newest `keep`, `protect` and held
        ones; unfinished publishes older than PARTIAL_MAX_AGE_S (at `now`, default the time);
        and, given serving's `exports` dir, the ONNX exports of versions no longer here."""
        check_keep(keep)
        versions = self.versions()
        current, previous = self.current(), self.previous()
        kept = set(versions[-keep:]) | set(protect) | {previous, current and current.version}
        reason = f"retention: current, previous and the newest {keep} are kept"
        removed: list[str] = []
        held: list[str] = []
        for version in (v for v in versions if v not in kept):
            outcome = self._remove(version, reason)
            if outcome != "gone":
                (removed if outcome == "removed" else held).append(version)
        leftovers = self._remove_leftovers(time.time() if now is None else now)
        gone = self._prune_exports(Path(exports)) if exports is not None else ()
        return PruneResult(tuple(removed), tuple(held), leftovers, gone, tuple(self.versions()))

    def _remove(self, version: str, reason: str) -> str:
        """Remove one version: "removed", "held" (a reader holds it or it became current since
        prune chose it) or "gone" (removed by someone else)."""
        path = self.root / VERSIONS / version
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return "gone"
        doomed = path.with_name(version + REMOVING)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            current = self.current()
            if current is not None and current.version == version:
                return "held"
            path.rename(doomed)
            _fsync(path.parent)
        finally:
            os.close(fd)
        _rmtree(doomed)
        self.record("remove", version, reason)
        return "removed"

    def _remove_leftovers(self, now: float) -> tuple[str, ...]:
        """Removals that did not finish, and publishes unfinished for PARTIAL_MAX_AGE_S (by
        ctime: copying keeps the source's mtimes, ctime says when the writer last wrote)."""
        folder = self.root / VERSIONS
        gone = []
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.endswith(REMOVING):
                why = "finished a removal that was interrupted"
            elif path.name.endswith(PARTIAL) and now - _ctime(path) > PARTIAL_MAX_AGE_S:
                why = f"unfinished publish older than {PARTIAL_MAX_AGE_S:.0f} s"
            else:
                continue
            _rmtree(path)
            self.record("remove", path.name.rsplit(".", 1)[0], why)
            gone.append(path.name)
        return tuple(gone)

    def _prune_exports(self, exports: Path) -> tuple[str, ...]:
        """Serving's ONNX exports made from a version that is no longer in this registry."""
        have = set(self.versions())
        gone = []
        for folder in sorted(exports.iterdir()) if exports.is_dir() else []:
            if folder.name.endswith(REMOVING):
                _rmtree(folder)
                continue
            source = _export_source(folder)
            if source is None or source in have:
                continue
            doomed = folder.with_name(folder.name + REMOVING)
            folder.rename(doomed)  # serving never reads a directory of this name
            _rmtree(doomed)
            self.record("remove-export", source, f"ONNX export {folder.name}: its version is gone")
            gone.append(folder.name)
        return tuple(gone)

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


def _still_at(fd: int, path: Path) -> bool:
    """Whether the directory open as `fd` is still the one at `path` (not renamed away)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _ctime(path: Path) -> float:
    """When the entry last changed; +inf for one gone meanwhile (a publish just finished)."""
    try:
        return path.stat().st_ctime
    except FileNotFoundError:
        return float("inf")


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with suppress(FileNotFoundError):  # removed meanwhile by a prune
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _rmtree(path: Path) -> None:
    """Remove a tree; what another process removed first is not an error."""

    def missing_ok(function: Any, name: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=missing_ok)


def _export_source(folder: Path) -> str | None:
    """The registry version an export directory was made from; None for one being written, one
    without a readable record, or one not made from a registry version."""
    if PARTIAL in folder.name or not folder.is_dir():
        return None
    try:
        info = json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = Path(str(info.get("package", ""))).name if isinstance(info, dict) else ""
    return name if _is_version(name) else None


def _drop_unfinished_line(handle: BinaryIO) -> None:
    """Truncate an append-mode file back to its last newline (after a writer died mid-line)."""
    handle.seek(0)
    text = handle.read()
    if text and not text.endswith(b"\n"):
        handle.truncate(text.rfind(b"\n") + 1)
