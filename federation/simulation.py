"""In-process federated rounds over simulated hospitals (experiments and tests; no Ray).

The server side is the same code the Flower strategy runs (`updates.downlink`,
`updates.aggregate_round`); the hospitals are real `HospitalNode`s. Bytes are measured on the
serialized payloads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.notes import Note
from federation.compression import wire_bytes
from federation.config import FederationConfig
from federation.task import HospitalNode
from federation.updates import aggregate_round, downlink

log = logging.getLogger(__name__)
Scorer = Callable[[HospitalNode, dict[str, np.ndarray], Sequence[Note]], float]


@dataclass
class RoundRecord:
    server_round: int
    test_f1: float
    losses: dict[str, float]
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    rejected: dict[str, list[str]] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    eps_spent: dict[str, float] = field(default_factory=dict)
    dp_clipped_share: dict[str, float] = field(default_factory=dict)


@dataclass
class SimulationResult:
    initial_f1: float
    rounds: list[RoundRecord]
    exchange_parameters: int
    final_arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "initial_f1": self.initial_f1,
            "exchange_parameters": self.exchange_parameters,
            "rounds": [asdict(r) for r in self.rounds],
        }


def simulate(
    cfg: FederationConfig,
    partitions: Sequence[Sequence[Note]],
    test_notes: Sequence[Note],
    state_dir: Path,
    on_round: Callable[[RoundRecord, dict[str, np.ndarray]], None] | None = None,
    bases_dir: Path | None = None,
    score_every: int = 1,
    initial: Mapping[str, np.ndarray] | None = None,
    scorer: Scorer | None = None,
    first_round: int = 1,
) -> SimulationResult:
    """Run `cfg.rounds` rounds of train -> check -> aggregate -> score on `test_notes`.

    With `score_every` > 1 only every that many rounds (and the last) are scored; the others'
    `test_f1` is NaN (long runs of short rounds). `initial`: the round-0 global model (a warm
    start) instead of the nodes' seeded start. `scorer(node, arrays, notes)`: the F1 to record
    instead of `HospitalNode.score`'s (e.g. one that reuses the frozen prefix's cache).
    `on_round(record, global_arrays)` after each round (a caller's checkpoint); resuming from
    one: `first_round` k + 1 with `initial` the global model after round k (the nodes' state
    dirs keep their ledgers; `initial_f1` is then NaN and `rounds` holds the rounds run).
    """
    score = scorer or (lambda node, arrays, notes: node.score(arrays, notes)["f1"])
    nodes = [
        HospitalNode.load(
            cfg, notes, state_dir / f"hospital-{i}", f"hospital-{i}", bases_dir=bases_dir
        )
        for i, notes in enumerate(partitions)
    ]
    global_arrays = dict(initial) if initial is not None else nodes[0].initial_arrays()
    initial_f1 = score(nodes[0], global_arrays, test_notes) if first_round == 1 else math.nan
    records = []
    for server_round in range(first_round, cfg.rounds + 1):
        sent = downlink(global_arrays, nodes[0].cfg.compression)  # resolved for the base
        updates = {node.name: node.train_round(sent, server_round) for node in nodes}
        reference = {k: v.astype(np.float32) for k, v in sent.items()}
        new, outcome = aggregate_round(
            reference,
            [(name, u.payload, u.num_examples, u.declined) for name, u in updates.items()],
            cfg.update_norm_bound,
        )
        global_arrays = reference if new is None else new
        scored = server_round % score_every == 0 or server_round == cfg.rounds
        record = RoundRecord(
            server_round,
            score(nodes[0], global_arrays, test_notes) if scored else float("nan"),
            {n: float(u.metrics.get("loss", float("nan"))) for n, u in updates.items()},
            {n: wire_bytes(u.payload) for n, u in updates.items()},
            {n: wire_bytes(sent) for n in updates},
            outcome.rejected,
            outcome.declined,
            {
                n: float(u.metrics["eps_spent"])
                for n, u in updates.items()
                if "eps_spent" in u.metrics
            },
            {
                n: float(u.metrics["dp_clipped_share"])
                for n, u in updates.items()
                if "dp_clipped_share" in u.metrics
            },
        )
        log.info("round %d: test F1 %.4f", server_round, record.test_f1)
        records.append(record)
        if on_round is not None:
            on_round(record, global_arrays)
    parameters = sum(int(v.size) for v in global_arrays.values())
    return SimulationResult(initial_f1, records, parameters, global_arrays)
