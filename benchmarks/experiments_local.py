"""Single-site training for the experiments, on the same `HospitalNode` the federation uses.

Centralized training and "each hospital alone" are one node training for E epochs, so their
learning rates, schedule and head init are the federated nodes' own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.notes import Note
from benchmarks.recipes import plain_changes, plain_config
from federation.config import FederationConfig
from federation.privacy import DPSGDPolicy


def train_and_score(
    state_dir: Path,
    spec: str,
    notes: Sequence[Note],
    test: Sequence[Note],
    epochs: int,
    init: dict[str, np.ndarray] | None = None,
    task: str = "ner",
) -> dict[str, Any]:
    """Train `spec` on `notes` for `epochs` (from `init` if given); the node's scores on `test`
    (strict entity F1 for NER; F1, precision, recall and accuracy for the sentence task)."""
    from federation.task import HospitalNode

    cfg = plain_config(layers=spec, local_epochs=max(epochs, 1), task=task)
    tag = f"{spec}{len(notes)}{epochs}" + ("" if task == "ner" else task)
    name = hashlib.sha256(tag.encode()).hexdigest()[:12]
    node = HospitalNode.load(cfg, list(notes), state_dir / "experiments" / "local" / name,
                             "local", bases_dir=state_dir)  # fmt: skip
    arrays = init if init is not None else node.initial_arrays()
    if epochs > 0 and notes:
        update = node.train_round(arrays, 1)
        arrays = update.payload
    return {**node.score(arrays, test), "notes": len(notes), "epochs": epochs}


def settings_key(cfg: FederationConfig) -> str:
    """The settings that differ from the plain recipe (a key that survives new config fields)."""
    return json.dumps(dict(plain_changes(cfg)), sort_keys=True, default=str)


def noise_for(epsilon: float, delta: float, windows: int, cfg: FederationConfig) -> float:
    """DP-SGD noise multiplier so `cfg.rounds` rounds over `windows` spend at most `epsilon`."""
    from opacus.accountants.utils import get_noise_multiplier

    rate, steps = DPSGDPolicy.planned(windows, cfg.batch_size, cfg.local_epochs)
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=rate,
            steps=steps * cfg.rounds,
            accountant="rdp",
        )
    )


def consortium_arrays(
    state_dir: Path, cfg: FederationConfig, parts: Sequence[Sequence[Note]], test: Sequence[Note]
) -> dict[str, np.ndarray]:
    """The global model after `cfg.rounds` federated rounds over `parts` (cached as .npz)."""
    from federation.simulation import simulate

    settings = json.dumps([settings_key(cfg), [len(p) for p in parts]])
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    path = state_dir / "experiments" / f"consortium-{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    result = simulate(cfg, parts, test, state_dir / "experiments" / "consortium",
                      bases_dir=state_dir, score_every=cfg.rounds)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result.final_arrays)  # type: ignore[arg-type]
    return result.final_arrays


def ner_then_rule(
    state_dir: Path, cfg: FederationConfig, arrays: dict[str, np.ndarray], test: Sequence[Note]
) -> dict[str, Any]:
    """The sentence task answered by a NER model: the labelling rule on its predicted entities."""
    from dataclasses import replace

    from appliance.inference import Annotator
    from appliance.sentence_task import sentence_label, sentence_scores
    from federation.task import HospitalNode

    node = HospitalNode.load(cfg, [], state_dir / "experiments" / "local" / "ner-rule", "rule",
                             bases_dir=state_dir)  # fmt: skip
    node.set_arrays(arrays)
    predictions = Annotator(node.loaded, cfg.max_tokens, cfg.context_tokens, 16).predict(test)
    found = [
        sentence_label(replace(n, entities=p.spans)) for n, p in zip(test, predictions, strict=True)
    ]
    return sentence_scores([sentence_label(n) for n in test], found)
