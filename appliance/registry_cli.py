"""`appliance registry list | rollback VERSION | prune`: the model registry for IT, as JSON."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import PackageError
from appliance.package_meta import read_package_meta
from appliance.registry import CURRENT, KEEP_VERSIONS, VERSIONS, ModelRegistry, RegistryError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `registry` and its three commands to the `appliance` parser."""
    registry = sub.add_parser("registry", help="list, roll back or prune model registry versions")
    commands = registry.add_subparsers(dest="registry_command", required=True)
    listing = commands.add_parser("list", help="versions, current/previous, size, publish time")
    rollback = commands.add_parser("rollback", help="point `current` at an existing version")
    rollback.add_argument("version", help="the version to serve, NNNNNN-label (see `list`)")
    prune = commands.add_parser("prune", help="remove versions beyond the retention")
    prune.add_argument(
        "--keep",
        type=int,
        default=KEEP_VERSIONS,
        help=f"newest versions kept besides current and previous (default {KEEP_VERSIONS})",
    )
    prune.add_argument(
        "--exports",
        type=Path,
        help="serving's ONNX exports dir (<state_dir>/exports): remove exports of gone versions",
    )
    for parser in (listing, rollback, prune):
        parser.add_argument("--registry", required=True, type=Path, help="the registry directory")
    listing.set_defaults(handler=list_command)
    rollback.set_defaults(handler=rollback_command)
    prune.set_defaults(handler=prune_command)


def open_registry(root: Path) -> ModelRegistry:
    """The registry at `root`; a directory that is not one is an error naming it."""
    if not (root / VERSIONS).is_dir() and not (root / CURRENT).is_symlink():
        raise RegistryError(f"{root}: not a model registry (no {VERSIONS}/ directory)")
    return ModelRegistry(root)


def describe(registry: ModelRegistry) -> dict[str, Any]:
    """Every version with its size, publish time and held-out F1 (from the promotion's record),
    and which are current and previous."""
    current = registry.current()
    now = current.version if current else None
    previous = registry.previous()
    history = registry.history()
    published = {e.get("version"): e.get("time") for e in history if e.get("event") == "publish"}
    f1 = {e.get("version"): e.get("candidate_f1") for e in history if "candidate_f1" in e}
    versions = [
        {
            "version": version,
            "current": version == now,
            "previous": version == previous,
            "bytes": registry.size_bytes(version),
            "published": published.get(version),
            "f1": f1.get(version),
        }
        for version in registry.versions()
    ]
    return {
        "registry": str(registry.root),
        "current": now,
        "previous": previous,
        "bytes": registry.size_bytes(),
        "versions": versions,
    }


def list_command(args: argparse.Namespace) -> dict[str, Any]:
    return _guarded(args.registry, describe)


def rollback_command(args: argparse.Namespace) -> dict[str, Any]:
    return _guarded(args.registry, lambda registry: rollback(registry, args.version))


def prune_command(args: argparse.Namespace) -> dict[str, Any]:
    def prune(registry: ModelRegistry) -> dict[str, Any]:
        result = registry.prune(args.keep, exports=args.exports)
        return {"registry": str(registry.root), "keep": args.keep, **result.as_dict()}

    return _guarded(args.registry, prune)


def rollback(registry: ModelRegistry, version: str) -> dict[str, Any]:
    """Point `current` at an existing, whole package version (history reason "rollback")."""
    if version not in registry.versions():
        known = ", ".join(registry.versions()[-10:]) or "none"
        raise RegistryError(
            f"{registry.root}: no version {version!r} to roll back to (newest: {known}); "
            "`appliance registry list` shows them all"
        )
    current = registry.current()
    was = current.version if current else None
    if version == was:
        raise RegistryError(f"{registry.root}: {version} is already current")
    try:
        read_package_meta(registry.path(version))
    except PackageError as err:
        raise RegistryError(f"{registry.root}: cannot roll back to {version}: {err}") from err
    registry.promote(version, "rollback", replaced=was)
    return {"registry": str(registry.root), "current": version, "was": was}


def _guarded(root: Path, action: Callable[[ModelRegistry], dict[str, Any]]) -> dict[str, Any]:
    """Run `action` on the registry at `root`; a file system error becomes one naming it."""
    registry = open_registry(root)
    try:
        return action(registry)
    except OSError as err:
        where = err.filename or root
        raise RegistryError(f"registry {root}: {where}: {err.strerror or err}") from err
