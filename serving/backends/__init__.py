"""Runtime backends, one module each, chosen by the `backend` config string.

This module stays light (no torch, spaCy or ONNX Runtime): the config validates names against
`BACKENDS`, and `appliance serve` decides from `TORCH_FREE` whether its process may keep torch
out before anything heavy is imported.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.backends.base import Backend, BackendOptions

BACKENDS = {
    "onnx-int4": "serving.backends.onnx_int4:OnnxInt4Backend",
    "onnx-int8": "serving.backends.onnx_int8:OnnxInt8Backend",
    "torch-nf4": "serving.backends.torch_nf4:TorchNf4Backend",
    "torch-fp32": "serving.backends.torch_fp32:TorchBackend",
}
# Backends that never touch torch in the serving process (their export runs in a subprocess).
TORCH_FREE = frozenset({"onnx-int4", "onnx-int8"})


def load_backend(name: str, package_path: Path, options: BackendOptions) -> Backend:
    """Load `package_path` with the backend called `name` (see BACKENDS)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    backend: Backend = getattr(importlib.import_module(module), cls)(package_path, options)
    return backend


def keep_torch_out() -> bool:
    """Make `import torch` fail in this process; False when torch is already imported.

    spaCy's thinc imports torch whenever it is installed, which costs about 180 MB of resident
    memory a torch-free backend never uses. Call it before spaCy is first imported.
    """
    if "torch" in sys.modules:
        return False
    sys.modules["torch"] = None  # type: ignore[assignment]  # import torch -> ImportError
    return True


__all__ = ["BACKENDS", "TORCH_FREE", "keep_torch_out", "load_backend"]
