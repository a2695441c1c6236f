"""The ClientApp's evaluate scores and changes nothing; promotion is its own, requested step."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.registry import ModelRegistry
from federation.client_app import HospitalClient
from federation.journal import read_journal
from federation.task import HospitalNode
from tests.federation.helpers import corpus, tiny_config


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> HospitalClient:
    notes = corpus(tmp_path / "c", 40, seed=1)
    heldout = corpus(tmp_path / "h", 12, seed=2)
    node = HospitalNode.load(tiny_config(tiny_llama), notes, tmp_path / "n", "h", heldout)
    node_config = {"registry": str(tmp_path / "registry"), "journal": str(tmp_path / "j.jsonl")}
    return HospitalClient(node, node_config)


def test_evaluate_alone_leaves_the_registry_alone(client: HospitalClient):
    # Prepare
    parameters = list(client.node.initial_arrays().values())
    registry = ModelRegistry(client.node_config["registry"])

    # Execute
    loss, count, metrics = client.evaluate(parameters, {"server-round": 1})

    # Assert
    assert count == 12 and loss == pytest.approx(1.0 - metrics["f1"])
    assert registry.versions() == [] and registry.current() is None


def test_promotion_runs_when_the_server_asks_for_it(client: HospitalClient):
    # Prepare
    parameters = list(client.node.initial_arrays().values())
    registry = ModelRegistry(client.node_config["registry"])

    # Execute
    _, count, _ = client.evaluate(parameters, {"server-round": 2, "promote": True})

    # Assert
    assert count == 12
    assert [v.split("-", 1)[1] for v in registry.versions()] == ["round-2"]
    events = [e for e in read_journal(client.node_config["journal"]) if e.event == "promotion"]
    assert [e.fields["server_round"] for e in events] == [2]
