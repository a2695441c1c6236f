"""Server side of a round: what is sent, the checks of hospital updates, their aggregation.

Shared by the Flower strategy and the in-process simulation.

An update is decoded to float32 weights a tensor at a time (`compression.decode_tensor`) and
checked: expected tensor names, shapes, float dtype, finite values, and the L2 norm of its change
from the global weights under a bound. A failing update is dropped and the problems are reported
with the node that sent it; the round goes on with the others. The accepted ones are averaged a
tensor at a time too, so a round holds the nodes' payloads as they came, never all of them
decoded at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federation.compression import decode_tensor, payload_names

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


def tensor_problems(name: str, value: np.ndarray, ref: np.ndarray) -> tuple[list[str], float]:
    """(problems, squared L2 distance from `ref`) of one decoded tensor."""
    if value.shape != ref.shape:
        return [f"{name}: shape {value.shape} != {ref.shape}"], 0.0
    if value.dtype.kind != "f":
        return [f"{name}: dtype {value.dtype} is not floating point"], 0.0
    if not np.isfinite(value).all():
        return [f"{name}: NaN or Inf values"], 0.0
    return [], float(np.square(value.astype(np.float64) - ref).sum())


def check_payload(
    payload: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], norm_bound: float
) -> list[str]:
    """Problems with an update (empty when it is fine), decoded and checked one tensor at a time:
    at the 1B size a decoded update is 1.95 GB of float32, and a round holds one per node."""
    problems = payload_dtype_problems(payload)
    if problems:
        return problems
    names = payload_names(payload)
    missing, extra = sorted(set(reference) - set(names)), sorted(set(names) - set(reference))
    if missing:
        problems.append(f"missing tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected tensors {extra[:3]}{'...' if len(extra) > 3 else ''}")
    squared = 0.0
    for name in sorted(set(names) & set(reference)):
        ref = np.asarray(reference[name])
        found, distance = tensor_problems(name, decode_tensor(payload, name, ref), ref)
        problems += found
        squared += distance
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


def sent_dtype(compression: str) -> type[np.floating]:
    """The server sends fp32 weights, or fp16 when the run compresses updates."""
    return np.float32 if compression == "none" else np.float16


def downlink(global_arrays: Mapping[str, np.ndarray], compression: str) -> Arrays:
    """What the server sends (`sent_dtype`)."""
    dtype = sent_dtype(compression)
    return {k: np.asarray(v).astype(dtype) for k, v in global_arrays.items()}


def weighted_average_payloads(
    updates: Sequence[tuple[Mapping[str, np.ndarray], int]],
    reference: Mapping[str, np.ndarray],
    dtype: type[np.floating] = np.float32,
) -> Arrays:
    """FedAvg, the example-weighted mean of each tensor, over encoded payloads (deltas against
    `reference`; plain weights need none), kept as `dtype`: each tensor is decoded from every
    update, averaged and dropped before the next one."""
    total = sum(n for _, n in updates)
    if not updates or total <= 0:
        raise ValueError("nothing to aggregate: no accepted update with examples")
    out: Arrays = {}
    for name in payload_names(updates[0][0]):
        ref = reference.get(name)  # made once per tensor, for every update
        first, n = updates[0]
        acc = decode_tensor(first, name, ref).astype(np.float64) * n
        for payload, n in updates[1:]:
            acc += decode_tensor(payload, name, ref).astype(np.float64) * n
        out[name] = (acc / total).astype(dtype)
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
    dtype: type[np.floating] = np.float32,
) -> tuple[Arrays | None, RoundOutcome]:
    """(node, payload, examples, declined reason) per reply -> new global weights (as `dtype`)
    and what happened; None instead of weights when no update survived (the model stays)."""
    outcome, kept = RoundOutcome(), []
    for node, payload, examples, declined in results:
        if declined:
            outcome.declined[node] = declined
            continue
        try:
            problems = check_payload(payload, global_arrays, norm_bound)
        except (ValueError, KeyError, TypeError) as err:
            problems = [f"undecodable update: {err}"]
        if problems or examples <= 0:
            problems = problems or [f"claims {examples} examples"]
            outcome.rejected[node] = problems
            log.warning("rejected the update of node %s: %s", node, "; ".join(problems))
            continue
        kept.append((payload, examples))
        outcome.accepted.append(node)
        outcome.examples += examples
    if not kept:
        return None, outcome
    return weighted_average_payloads(kept, global_arrays, dtype), outcome
