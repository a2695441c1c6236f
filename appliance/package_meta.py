"""A model package's file names, its package.json and the weights' integrity, read without torch.

The ONNX serving process reads packages through this module so that it never loads torch;
`appliance.package` builds the full reader (weights included) on top of it.

package.json records the size and sha256 of weights.safetensors (`"weights"`), so a truncated or
replaced weights file is refused by name before anything loads it. Packages written before that
record existed carry no `"weights"` entry and load unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from appliance.errors import PackageError

FORMAT = "appliance-model-package/1"
WEIGHTS = "weights.safetensors"
META = "package.json"


def missing(root: Path, name: str) -> PackageError:
    return PackageError(f"{root}: not a model package ({name} missing)")


def read_package_meta(root: Path) -> dict[str, Any]:
    """`root/package.json` as a dict; a missing, truncated or unreadable one is a `PackageError`."""
    try:
        meta = json.loads((root / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise missing(root, META) from None
    except OSError as err:
        raise PackageError(f"{root / META}: cannot read: {err}") from err
    except ValueError as err:
        raise PackageError(
            f"{root / META}: not valid JSON ({err}); the file is truncated or damaged, "
            "copy the package again"
        ) from err
    if not isinstance(meta, dict):
        raise PackageError(f"{root / META}: holds a {type(meta).__name__}, not a JSON object")
    return meta


def weights_record(root: Path) -> dict[str, Any]:
    """What package.json records about `root/weights.safetensors`: its size and sha256."""
    path = root / WEIGHTS
    return {"file": WEIGHTS, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def verified_weights_sha256(root: Path, meta: dict[str, Any]) -> str:
    """The sha256 of `root/weights.safetensors`, after checking its size and digest against
    package.json's record (packages without the record are not checked)."""
    path = root / WEIGHTS
    record = meta.get("weights")
    try:
        size = path.stat().st_size
        digest = _sha256(path)
    except FileNotFoundError:
        raise missing(root, WEIGHTS) from None
    except OSError as err:
        raise PackageError(f"{path}: cannot read: {err}") from err
    if record is None:
        return digest
    if not isinstance(record, dict) or not {"bytes", "sha256"} <= record.keys():
        raise PackageError(f"{root / META}: 'weights' must record 'bytes' and 'sha256'")
    if size != record["bytes"]:
        raise PackageError(
            f"{path}: {size} bytes, but {META} records {record['bytes']}; the file is truncated "
            "or was replaced, copy the package again"
        )
    if digest != record["sha256"]:
        raise PackageError(
            f"{path}: sha256 {digest[:16]}... differs from {str(record['sha256'])[:16]}... "
            f"recorded in {META}; the file is damaged or was replaced, copy the package again"
        )
    return digest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
