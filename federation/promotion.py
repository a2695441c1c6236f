"""Publish a candidate package into the registry and move `current` only if it is not worse.

"Not worse" is measured, on this hospital's own held-out notes: the candidate's strict entity F1
must be at least the current model's minus a tolerance. A node that has just scored the
candidate's weights on those notes passes its F1 (`candidate_f1`); the package it wrote is then
only checked whole (its weights against package.json's digest) instead of loaded and scored
again. The first model is promoted if it loads
and finds entities in a smoke note. A rejected or broken candidate stays in `versions/` for audit
(it is never pointed at) and the reason goes to the registry history and the round journal.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.evaluation import evaluate_predictions
from appliance.inference import Annotator
from appliance.model import ModelLoadError
from appliance.notes import Note
from appliance.package import PackageError, load_packaged_model
from appliance.package_meta import read_package_meta, verified_weights_sha256
from appliance.registry import ModelRegistry, RegistryVersion
from federation.journal import RoundJournal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    outcome: str  # "promoted" | "kept" | "broken"
    version: str
    reason: str
    candidate_f1: float | None
    current_version: str | None
    current_f1: float | None

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def heldout_f1(
    package_dir: Path,
    notes: Sequence[Note],
    state_dir: Path,
    base: str | None = None,
    quantization: str = "none",
) -> float:
    """Strict entity F1 (seqeval, micro) of a package on held-out notes; `quantization` is how
    the base's frozen part is loaded (candidate and current are scored alike)."""
    loaded, package = load_packaged_model(package_dir, state_dir, base, quantization)
    windowing = package.meta["windowing"]
    annotator = Annotator(loaded, windowing["max_tokens"], windowing["context_tokens"])
    metrics = evaluate_predictions(notes, annotator.predict(notes))
    del annotator, loaded
    gc.collect()  # one scored model at a time: the next package loads into this memory
    return float(metrics["entity_strict"]["overall"]["f1"])


def publish(registry: ModelRegistry, candidate: Path, label: str) -> RegistryVersion:
    """Copy a package into `versions/`; it appears whole or not at all (`ModelRegistry.publish`)."""
    return registry.publish(candidate, label, f"published from {candidate.name}")


def promote_if_not_worse(
    registry_root: Path,
    candidate: Path,
    heldout: Sequence[Note],
    tolerance: float,
    state_dir: Path,
    *,
    label: str = "candidate",
    base: str | None = None,
    quantization: str = "none",
    journal: RoundJournal | None = None,
    server_round: int | None = None,
    candidate_f1: float | None = None,
) -> PromotionDecision:
    """Publish `candidate`, score it (unless `candidate_f1` says its score) and the current
    model on `heldout`, promote or keep."""
    if not heldout:
        raise ValueError("promotion needs held-out notes to score the candidate on")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    registry = ModelRegistry(registry_root)
    slot = publish(registry, Path(candidate), label)
    current = registry.current()

    def score(package_dir: Path) -> float:
        if candidate_f1 is not None and package_dir == slot.path:
            verified_weights_sha256(package_dir, read_package_meta(package_dir))
            return candidate_f1
        return heldout_f1(package_dir, heldout, state_dir, base, quantization)

    decision = _decide(slot, current, tolerance, score)
    _report(registry, decision, journal, server_round)
    return decision


def _decide(
    slot: RegistryVersion,
    current: RegistryVersion | None,
    tolerance: float,
    score: Callable[[Path], float],
) -> PromotionDecision:
    now = current.version if current else None
    try:
        cand_f1 = score(slot.path)
    except (ModelLoadError, PackageError, OSError, KeyError) as err:
        return PromotionDecision("broken", slot.version, f"does not load: {err}", None, now, None)
    if current is None:
        return PromotionDecision(
            "promoted", slot.version, f"first model (F1 {cand_f1:.4f})", cand_f1, None, None
        )
    try:
        cur_f1 = score(current.path)
    except (ModelLoadError, PackageError, OSError, KeyError) as err:
        reason = f"current {current.version} no longer loads ({err}); candidate replaces it"
        return PromotionDecision("promoted", slot.version, reason, cand_f1, now, None)
    if cand_f1 >= cur_f1 - tolerance:
        reason = f"F1 {cand_f1:.4f} >= current {cur_f1:.4f} - tolerance {tolerance}"
        return PromotionDecision("promoted", slot.version, reason, cand_f1, now, cur_f1)
    reason = f"F1 {cand_f1:.4f} < current {cur_f1:.4f} - tolerance {tolerance}"
    return PromotionDecision("kept", slot.version, reason, cand_f1, now, cur_f1)


def _report(
    registry: ModelRegistry,
    decision: PromotionDecision,
    journal: RoundJournal | None,
    server_round: int | None,
) -> None:
    scores = {"candidate_f1": decision.candidate_f1, "current_f1": decision.current_f1}
    if decision.promoted:
        registry.promote(decision.version, decision.reason, **scores)
        log.info("promoted %s: %s", decision.version, decision.reason)
    else:
        registry.record("reject", decision.version, decision.reason, **scores)
        log.warning(
            "kept %s, not %s: %s", decision.current_version, decision.version, decision.reason
        )
    if journal is not None:
        journal.record(
            "promotion",
            outcome=decision.outcome,
            version=decision.version,
            reason=decision.reason[:200],
            server_round=server_round,
            **scores,
        )
