"""Runtime backends, one module each, chosen by the `backend` config string."""

from __future__ import annotations

import importlib
from pathlib import Path

from serving.backends.base import Backend, BackendError, BackendOptions

BACKENDS = {
    "torch-fp32": "serving.backends.torch_fp32:TorchBackend",
}


def load_backend(name: str, package_path: Path, options: BackendOptions) -> Backend:
    """Load `package_path` with the backend called `name` (see BACKENDS)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    backend: Backend = getattr(importlib.import_module(module), cls)(package_path, options)
    return backend


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendOptions", "load_backend"]
