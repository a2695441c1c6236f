"""The server drops corrupt updates with the reason and aggregates the rest, weighted."""

from __future__ import annotations

import ast
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from federation import strategy
from federation.compression import decode_update, encode_update
from federation.updates import aggregate_round, downlink, weighted_average_payloads

GLOBAL = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}


def _good(shift: float) -> dict[str, np.ndarray]:
    return {k: v + shift for k, v in GLOBAL.items()}


def test_weighted_average_weights_by_examples():
    out = weighted_average_payloads([(_good(1.0), 1), (_good(4.0), 3)], {})
    np.testing.assert_allclose(out["a"], np.full((2, 3), 3.25))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"a": np.full((2, 3), np.nan, np.float32), "b": GLOBAL["b"]}, "NaN or Inf"),
        ({"a": np.zeros((3, 2), np.float32), "b": GLOBAL["b"]}, "shape"),
        ({"a": np.zeros((2, 3), np.int64), "b": GLOBAL["b"]}, "not floating point"),
        ({**GLOBAL, "c": np.zeros(1, np.float32)}, "unexpected tensors"),
        ({"a": GLOBAL["a"]}, "missing tensors"),
        (_good(1e3), "above the bound"),
    ],
)
def test_corrupt_updates_are_rejected_and_logged(payload, problem, caplog):
    caplog.set_level(logging.WARNING)
    results = [("good", _good(1.0), 10, None), ("bad-node", payload, 10, None)]
    new, outcome = aggregate_round(GLOBAL, results, norm_bound=100.0)
    assert outcome.accepted == ["good"] and problem in " ".join(outcome.rejected["bad-node"])
    np.testing.assert_allclose(new["a"], _good(1.0)["a"])
    assert "bad-node" in caplog.text


def test_declined_nodes_are_reported_and_an_empty_round_keeps_the_model():
    new, outcome = aggregate_round(GLOBAL, [("n1", {}, 0, "privacy budget")], 100.0)
    assert outcome.declined == {"n1": "privacy budget"} and not outcome.accepted
    assert new is None


@pytest.mark.parametrize(("compression", "dtype"), [("none", np.float32), ("int8", np.float16)])
def test_downlink_sends_fp32_or_fp16(compression: str, dtype: type):
    sent = downlink(GLOBAL, compression)
    assert {v.dtype for v in sent.values()} == {np.dtype(dtype)}
    np.testing.assert_array_equal(sent["b"], GLOBAL["b"])


def _model(tensors: int, size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{k}": rng.normal(size=size).astype(np.float32) for k in range(tensors)}


def test_int8_round_averages_what_each_node_sent():
    reference = _model(3, 1000, 0)
    nodes = [(f"n{k}", _model(3, 1000, k + 1), 10 * (k + 1)) for k in range(3)]
    payloads = [(name, encode_update(w, reference, "int8"), n, None) for name, w, n in nodes]
    new, outcome = aggregate_round(reference, payloads, norm_bound=1e6)
    assert outcome.accepted == ["n0", "n1", "n2"] and outcome.examples == 60
    decoded = [(decode_update(p, reference), n) for _, p, n, _ in payloads]
    for name in reference:
        expected = sum(d[name].astype(np.float64) * n for d, n in decoded) / 60
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-6)


def test_a_round_never_holds_every_update_decoded():
    """Eight int8 updates of a 32 MB model: checked and averaged a tensor at a time, the round
    holds well under three decoded updates beside its payloads (all eight would be 256 MB)."""
    reference = _model(8, 1 << 20, 0)
    decoded_bytes = sum(v.nbytes for v in reference.values())
    payloads = [
        (f"n{k}", encode_update(_model(8, 1 << 20, k + 1), reference, "int8"), 1, None)
        for k in range(8)
    ]
    tracemalloc.start()
    try:
        new, outcome = aggregate_round(reference, payloads, norm_bound=1e9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(outcome.accepted) == 8 and set(new) == set(reference)
    assert peak < 3 * decoded_bytes, f"peak {peak / 2**20:.0f} MB"


def test_the_production_strategy_does_not_import_the_simulation():
    # Prepare
    source = Path(strategy.__file__).read_text(encoding="utf-8")

    # Execute
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)

    # Assert
    assert "federation.updates" in imported
    assert not any(name.startswith("federation.simulation") for name in imported)
