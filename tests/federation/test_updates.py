"""The server drops corrupt updates with the reason and aggregates the rest, weighted."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest

from federation import strategy
from federation.updates import aggregate_round, downlink, weighted_average

GLOBAL = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}


def _good(shift: float) -> dict[str, np.ndarray]:
    return {k: v + shift for k, v in GLOBAL.items()}


def test_weighted_average_weights_by_examples():
    out = weighted_average([(_good(1.0), 1), (_good(4.0), 3)])
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
    np.testing.assert_array_equal(new["b"], GLOBAL["b"])


@pytest.mark.parametrize(("compression", "dtype"), [("none", np.float32), ("int8", np.float16)])
def test_downlink_sends_fp32_or_fp16(compression: str, dtype: type):
    sent = downlink(GLOBAL, compression)
    assert {v.dtype for v in sent.values()} == {np.dtype(dtype)}
    np.testing.assert_array_equal(sent["b"], GLOBAL["b"])


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
