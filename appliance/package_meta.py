"""A model package's file names and its package.json, read without torch.

The ONNX serving process reads packages through this module so that it never loads torch;
`appliance.package` builds the full reader (weights included) on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.errors import PackageError

FORMAT = "appliance-model-package/1"
WEIGHTS = "weights.safetensors"
META = "package.json"


def read_package_meta(root: Path) -> dict[str, Any]:
    """`root/package.json` as a dict; a missing or unreadable file is a `PackageError`."""
    try:
        meta: dict[str, Any] = json.loads((root / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{root}: not a model package ({META} missing)") from None
    except (OSError, ValueError) as err:
        raise PackageError(f"{root}: unreadable model package: {err}") from err
    return meta
