"""`torch-fp32`: the package on its full-precision base in PyTorch; the reference for parity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from appliance.encoding import EncodedWindow
from appliance.inference import window_log_probs
from appliance.model import ModelLoadError
from appliance.package import PackageError, load_packaged_model
from serving.backends.base import Backend, BackendError, BackendOptions


class TorchBackend(Backend):
    name = "torch-fp32"
    quantization = "none"

    @property
    def device(self) -> str:
        """Where the weights go: the GPU when one is present."""
        return "cuda" if torch.cuda.is_available() else "cpu"

    def __init__(self, package_path: Path, options: BackendOptions) -> None:
        super().__init__(package_path, options)
        if options.threads:
            torch.set_num_threads(options.threads)
        try:
            self.loaded, self.package = load_packaged_model(
                package_path, options.state_dir, options.base, self.quantization, self.device
            )
        except (ModelLoadError, PackageError) as err:
            raise BackendError(str(err)) from err

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.loaded.labels)

    @property
    def meta(self) -> dict[str, Any]:
        return self.package.meta

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        return window_log_probs(self.loaded, windows, batch_size=max(1, len(windows)))

    def close(self) -> None:
        del self.loaded
