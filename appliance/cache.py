"""Frozen-prefix activation cache: hidden states entering the lowest trained layer, on disk.

While the frozen part (base fingerprint, attention mode, quantization, first trained layer) and
the data (token ids of every window) are unchanged, the prefix output is reused across epochs and
across runs; any change gives a new key, so a stale entry can never be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from appliance.collate import collate_ids
from appliance.encoding import EncodedWindow, length_batches
from appliance.forward import prefix_states, unmask_from
from appliance.model import LoadedModel

log = logging.getLogger(__name__)


def data_fingerprint(windows: Sequence[EncodedWindow]) -> str:
    digest = hashlib.sha256()
    for w in windows:
        digest.update(len(w.input_ids).to_bytes(4, "little"))
        digest.update(torch.tensor(w.input_ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def cache_key(loaded: LoadedModel, first_layer: int, windows: Sequence[EncodedWindow]) -> str:
    # The prefix depends on the mask only through which of its layers are unmasked, so modes
    # that keep layers 0..first_layer-1 causal (causal, bidirectional-trained) share entries.
    frozen = {
        "base": loaded.fingerprint,
        "prefix_unmasked_from": min(unmask_from(loaded.model), first_layer),
        "quantization": loaded.config.quantization,
        "first_layer": first_layer,
        "torch": torch.__version__,
        "data": data_fingerprint(windows),
    }
    return hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:32]


def compute_states(
    loaded: LoadedModel,
    windows: Sequence[EncodedWindow],
    first_layer: int,
    batch_size: int = 32,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Run the frozen prefix once over every window; returns unpadded (T_i, C) states.
    `progress`: a bar on stderr, in windows (a full corpus takes minutes on a CPU)."""
    states: list[torch.Tensor] = [torch.empty(0)] * len(windows)
    pad_id = int(loaded.tokenizer.pad_token_id)
    bar = tqdm(total=len(windows), desc="prefix cache", unit="window", disable=not progress)
    for batch in length_batches([len(w) for w in windows], batch_size):
        ids, mask, _ = collate_ids([windows[i] for i in batch], pad_id)
        hidden = prefix_states(loaded.model, ids, mask, first_layer)  # (B, T, C)
        for row, i in enumerate(batch):
            states[i] = hidden[row, : len(windows[i])].clone()
        bar.update(len(batch))
    bar.close()
    return states


class PrefixCache:
    """Disk-backed store of prefix states for one model and one trained-layer boundary."""

    def __init__(
        self, loaded: LoadedModel, first_layer: int, directory: str | Path, progress: bool = False
    ) -> None:
        self.loaded = loaded
        self.first_layer = first_layer
        self.directory = Path(directory)
        self.progress = progress  # a bar while states are computed

    def path_for(self, windows: Sequence[EncodedWindow]) -> Path:
        return self.directory / f"{cache_key(self.loaded, self.first_layer, windows)}.safetensors"

    def states(self, windows: Sequence[EncodedWindow]) -> tuple[list[torch.Tensor], bool]:
        """Prefix states for `windows` and whether they came from disk."""
        path = self.path_for(windows)
        if path.is_file():
            try:
                stored = load_file(str(path))
                states = [stored[f"w{i}"] for i in range(len(windows))]
                os.utime(path)  # in use: a node that prunes unused entries keeps it
                log.info("activation cache hit: %s (%d windows)", path.name, len(windows))
                return states, True
            except (OSError, KeyError, RuntimeError, SafetensorError) as err:
                log.warning("activation cache %s unreadable (%s); recomputing", path.name, err)
        states = compute_states(self.loaded, windows, self.first_layer, progress=self.progress)
        self._store(path, states)
        return states, False

    def _store(self, path: Path, states: list[torch.Tensor]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({f"w{i}": s.contiguous() for i, s in enumerate(states)}, str(tmp))
        tmp.replace(path)
        log.info("activation cache stored: %s (%d windows)", path.name, len(states))
