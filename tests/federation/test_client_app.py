"""The ClientApp's evaluate scores and changes nothing; promotion is its own, requested step."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.registry import ModelRegistry
from federation.client_app import HospitalClient, hospital_node, release_node
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
    # the packages were scored in the node model's memory: the message's node has none now
    assert not hasattr(client.node, "loaded") and not hasattr(client.node, "trainer")


def test_a_released_node_is_loaded_anew_by_the_next_message(tiny_llama: Path, tmp_path: Path):
    cfg = tiny_config(tiny_llama)
    corpus(tmp_path / "c", 8, seed=3)
    node_config = {"notes": str(tmp_path / "c" / "notes-3.jsonl"), "state-dir": str(tmp_path / "s")}
    first = hospital_node(cfg, node_config)
    assert hospital_node(cfg, node_config) is first  # one per process and run
    release_node(first)
    again = hospital_node(cfg, node_config)
    assert again is not first and again.loaded is not None
