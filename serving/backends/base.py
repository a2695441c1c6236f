"""What every runtime backend offers the serving engine: windows in, per-word log-probs out.

The engine windows and tokenizes notes with the core (`appliance.encoding.encode_notes`) using
the backend's tokenizer, asks the backend for each window's log-probabilities over the BIO tags
(one row per core word, as `appliance.inference.window_log_probs` returns them), and decodes
spans with `appliance.inference.assemble`. A backend only runs the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from appliance.encoding import EncodedWindow
from serving import heap


@dataclass(frozen=True)
class BackendOptions:
    """Where a backend finds what it needs besides the package."""

    state_dir: Path
    base: str | None = None  # where IT put the base weights on this box (default: package's)
    threads: int = 0  # intra-op threads (0: the runtime's default)
    release_memory: bool = True  # give model-run memory back to the OS when the queue is idle
    work_turn: Path | None = (
        None  # the registry whose work turn an export takes (appliance.work_turn)
    )


class BackendError(RuntimeError):
    """A backend could not load or run a model package (reported, the old model keeps serving)."""


class Backend(ABC):
    """A loaded model package ready to score windows. Thread-compatible: one caller at a time."""

    name: str = ""
    quantization: str = ""

    def __init__(self, package_path: Path, options: BackendOptions) -> None:
        self.package_path = package_path
        self.options = options

    @property
    @abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    @property
    @abstractmethod
    def labels(self) -> tuple[str, ...]:
        """BIO tags in the order of the log-prob columns ("O" first)."""

    @property
    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """The package's package.json (base fingerprint, layers, windowing, training)."""

    @abstractmethod
    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        """(core words, tags) log-probabilities for each window, in order; one batch."""

    def release_memory(self) -> None:
        """Give memory freed by finished requests back to the OS (the engine calls it, from any
        thread, when no work is admitted).

        Activations and a request's windows are freed when it ends, but the C heap keeps the
        pages until trimmed (`serving.heap.trim`); without this a process stays at the resident
        size of its largest request.
        """
        if self.options.release_memory:
            heap.trim()

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free on collection
        """Release memory held by the model (after a swap drained the old version)."""
