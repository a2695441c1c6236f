"""Server side of a round: what is sent, the checks of hospital updates, their aggregation.

Shared by the Flower strategy and the in-process simulation.

An update is decoded to full float32 weights first (`compression.decode_update`), then checked:
expected tensor names, shapes, float dtype, finite values, and the L2 norm of its change from the
global weights under a bound. A failing update is dropped and the problems are reported with
the node that sent it; the round goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federation.compression import decode_update

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


def check_update(
    update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], norm_bound: float
) -> list[str]:
    """Problems with a decoded update (empty when it is fine)."""
    problems: list[str] = []
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing:
        problems.append(f"missing tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected tensors {extra[:3]}{'...' if len(extra) > 3 else ''}")
    squared = 0.0
    for name in sorted(set(update) & set(reference)):
        value, ref = np.asarray(update[name]), np.asarray(reference[name])
        if value.shape != ref.shape:
            problems.append(f"{name}: shape {value.shape} != {ref.shape}")
        elif value.dtype.kind != "f":
            problems.append(f"{name}: dtype {value.dtype} is not floating point")
        elif not np.isfinite(value).all():
            problems.append(f"{name}: NaN or Inf values")
        else:
            squared += float(np.square(value.astype(np.float64) - ref).sum())
    norm = squared**0.5
    if norm > norm_bound:
        problems.append(f"update norm {norm:.4g} above the bound {norm_bound:.4g}")
    return problems


def payload_dtype_problems(payload: Mapping[str, np.ndarray]) -> list[str]:
    """Weights sent as such (no compression tag) must be floating point, as sent."""
    return [
        f"{name}: dtype {np.asarray(value).dtype} is not floating point"
        for name, value in payload.items()
        if "@" not in name and np.asarray(value).dtype.kind != "f"
    ]


def downlink(global_arrays: Mapping[str, np.ndarray], compression: str) -> Arrays:
    """What the server sends: fp32 weights, or fp16 when the run compresses updates."""
    dtype = np.float32 if compression == "none" else np.float16
    return {k: np.asarray(v).astype(dtype) for k, v in global_arrays.items()}


def weighted_average(updates: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> Arrays:
    """FedAvg: the example-weighted mean of each tensor."""
    total = sum(n for _, n in updates)
    if not updates or total <= 0:
        raise ValueError("nothing to aggregate: no accepted update with examples")
    names = updates[0][0].keys()
    out: Arrays = {}
    for name in names:
        acc = np.zeros(np.shape(updates[0][0][name]), np.float64)
        for update, n in updates:
            acc += np.asarray(update[name], np.float64) * n
        out[name] = (acc / total).astype(np.float32)
    return out


@dataclass
class RoundOutcome:
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    examples: int = 0


def aggregate_round(
    global_arrays: Mapping[str, np.ndarray],
    results: Sequence[tuple[str, Mapping[str, np.ndarray], int, str | None]],
    norm_bound: float,
) -> tuple[Arrays, RoundOutcome]:
    """(node, payload, examples, declined reason) per reply -> new global weights + what happened.

    If no update survives, the global weights stay as they were.
    """
    outcome, kept = RoundOutcome(), []
    for node, payload, examples, declined in results:
        if declined:
            outcome.declined[node] = declined
            continue
        try:
            problems = payload_dtype_problems(payload)
            update = decode_update(payload, global_arrays) if not problems else {}
            problems = problems or check_update(update, global_arrays, norm_bound)
        except (ValueError, KeyError, TypeError) as err:
            problems = [f"undecodable update: {err}"]
        if problems or examples <= 0:
            problems = problems or [f"claims {examples} examples"]
            outcome.rejected[node] = problems
            log.warning("rejected the update of node %s: %s", node, "; ".join(problems))
            continue
        kept.append((update, examples))
        outcome.accepted.append(node)
        outcome.examples += examples
    if not kept:
        return {k: np.asarray(v, np.float32) for k, v in global_arrays.items()}, outcome
    return weighted_average(kept), outcome
