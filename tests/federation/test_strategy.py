"""The consortium strategy keeps one global model, in the form the nodes receive, and reads each
update from its message a tensor at a time."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from federation.compression import decode_update, encode_update, wire_bytes
from federation.config import FederationConfig
from federation.strategy import ConsortiumStrategy, ParametersView

NAMES = ["layer.w", "head.b"]
INITIAL = {
    "layer.w": np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32),
    "head.b": np.linspace(-1, 1, 5, dtype=np.float32),
}


class Node(ClientProxy):
    """A registered node: the strategy only samples it; nothing is sent to it in these tests."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _arrays(parameters: Parameters) -> dict[str, np.ndarray]:
    view = ParametersView(NAMES, parameters)
    return {n: view[n] for n in NAMES}


def _strategy(compression: str) -> tuple[ConsortiumStrategy, SimpleClientManager, list[Node]]:
    cfg = replace(FederationConfig(), compression=compression, min_nodes=2, fraction_train=1.0)
    manager = SimpleClientManager()
    nodes = [Node(k + 1) for k in range(2)]
    for node in nodes:
        manager.register(node)
    return ConsortiumStrategy(cfg, NAMES, INITIAL), manager, nodes


def _reply(payload: dict[str, np.ndarray], examples: int) -> FitRes:
    names = json.dumps(list(payload))
    parameters = ndarrays_to_parameters(list(payload.values()))
    return FitRes(Status(Code.OK, ""), parameters, examples, {"payload-names": names})


def test_a_view_reads_names_dtypes_and_tensors_from_the_bytes():
    view = ParametersView(NAMES, ndarrays_to_parameters([INITIAL[n] for n in NAMES]))
    assert list(view) == NAMES and len(view) == 2 and "head.b" in view and "other" not in view
    assert view.dtype("layer.w") == np.float32
    np.testing.assert_array_equal(view["head.b"], INITIAL["head.b"])
    assert wire_bytes(view) == wire_bytes(INITIAL)
    with pytest.raises(ValueError, match="1 tensors for 2 names"):
        ParametersView(NAMES, ndarrays_to_parameters([INITIAL["head.b"]]))


@pytest.mark.parametrize(("compression", "dtype"), [("none", np.float32), ("int8", np.float16)])
def test_a_round_averages_deltas_against_the_weights_sent(compression: str, dtype: type):
    strategy, manager, nodes = _strategy(compression)
    start = strategy.initialize_parameters(manager)
    assert start is not None
    pairs = strategy.configure_fit(1, start, manager)
    sent = _arrays(pairs[0][1].parameters)
    assert {a.dtype for a in sent.values()} == {np.dtype(dtype)}
    np.testing.assert_array_equal(sent["layer.w"], INITIAL["layer.w"].astype(dtype))

    reference = {n: a.astype(np.float32) for n, a in sent.items()}
    trained = [{n: a + 0.01 * (k + 1) for n, a in reference.items()} for k in range(2)]
    payloads = [encode_update(t, reference, compression) for t in trained]
    results = [(nodes[k], _reply(payloads[k], 10 * (k + 1))) for k in range(2)]
    new, metrics = strategy.aggregate_fit(1, results, [])

    assert new is not None and metrics["accepted"] == 2
    decoded = [decode_update(p, reference) for p in payloads]
    for name in NAMES:
        expected = (decoded[0][name] * 10 + decoded[1][name] * 20) / 30
        got = _arrays(new)[name]
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected.astype(dtype), rtol=1e-3, atol=1e-3)


def test_an_unreadable_update_is_rejected_and_the_round_keeps_the_rest(caplog):
    strategy, manager, nodes = _strategy("int8")
    start = strategy.initialize_parameters(manager)
    assert start is not None
    reference = _arrays(strategy.configure_fit(1, start, manager)[0][1].parameters)
    good = encode_update({n: a + 0.01 for n, a in reference.items()}, reference, "int8")
    garbage = FitRes(
        Status(Code.OK, ""),
        Parameters(tensors=[b"not a tensor"] * len(good), tensor_type="numpy.ndarray"),
        10,
        {"payload-names": json.dumps(list(good))},
    )
    new, metrics = strategy.aggregate_fit(
        1, [(nodes[0], _reply(good, 10)), (nodes[1], garbage)], []
    )
    assert metrics["accepted"] == 1 and metrics["rejected"] == 1
    assert "undecodable update" in caplog.text and new is not None


def test_a_round_with_no_accepted_update_keeps_the_model_sent():
    strategy, manager, nodes = _strategy("int8")
    start = strategy.initialize_parameters(manager)
    assert start is not None
    sent = strategy.configure_fit(1, start, manager)[0][1].parameters
    declined = FitRes(Status(Code.OK, ""), sent, 0, {"declined": "privacy budget"})
    new, metrics = strategy.aggregate_fit(1, [(n, declined) for n in nodes], [])
    assert new is sent and metrics["declined"] == 2


def test_what_a_wrapper_did_to_the_model_is_what_the_nodes_receive():
    """The server-side DP noise (float64 in Flower's wrapper) reaches the nodes, rounded to the
    dtype they receive, and the evaluated model is the one the next round trains from."""
    strategy, manager, _ = _strategy("int8")
    noisy = {n: INITIAL[n].astype(np.float64) + 0.5 for n in NAMES}
    parameters = ndarrays_to_parameters([noisy[n] for n in NAMES])
    fit = _arrays(strategy.configure_fit(2, parameters, manager)[0][1].parameters)
    evaluated = _arrays(strategy.configure_evaluate(2, parameters, manager)[0][1].parameters)
    for name in NAMES:
        np.testing.assert_array_equal(fit[name], noisy[name].astype(np.float16))
        np.testing.assert_array_equal(evaluated[name], fit[name])
