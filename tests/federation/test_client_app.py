"""The ClientApp's evaluate scores and changes nothing; promotion is its own, requested step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.registry import ModelRegistry
from appliance.work_turn import TurnBusy, work_turn
from federation.client_app import HospitalClient, hospital_node, release_node
from federation.daemon_config import node_privacy
from federation.journal import read_journal
from federation.task import HospitalNode
from tests.appliance.test_work_turn import holder
from tests.federation.helpers import corpus, tiny_config


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> HospitalClient:
    notes = corpus(tmp_path / "c", 40, seed=1)
    heldout = corpus(tmp_path / "h", 12, seed=2)
    cfg = tiny_config(tiny_llama)
    node = HospitalNode.load(cfg, notes, tmp_path / "n", "h", heldout)
    node_config = {
        "hospital": "h",
        "registry": str(tmp_path / "registry"),
        "journal": str(tmp_path / "j.jsonl"),
    }
    return HospitalClient(cfg, node_config, lambda: node)


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
    _, count, metrics = client.evaluate(parameters, {"server-round": 2, "promote": True})

    # Assert
    assert count == 12
    assert [v.split("-", 1)[1] for v in registry.versions()] == ["round-2"]
    events = [e for e in read_journal(client.node_config["journal"]) if e.event == "promotion"]
    assert [e.fields["server_round"] for e in events] == [2]
    assert events[0].fields["candidate_f1"] == pytest.approx(metrics["f1"])  # scored once
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


def test_a_round_loads_trains_and_promotes_inside_the_work_turn(tiny_llama: Path, tmp_path: Path):
    # Prepare: a node whose loading proves the turn is taken by then
    cfg = tiny_config(tiny_llama, local_epochs=1)
    node = HospitalNode.load(cfg, corpus(tmp_path / "c", 16, seed=4), tmp_path / "n", "h", [])
    registry = tmp_path / "registry"
    probes: list[str] = []

    def load() -> HospitalNode:
        with pytest.raises(TurnBusy), work_turn(registry, "serving's export", 0):
            pass
        probes.append("held")
        return node

    client = HospitalClient(cfg, {"hospital": "h", "registry": str(registry)}, load)
    parameters = list(node.initial_arrays().values())

    # Execute
    _, count, metrics = client.fit(parameters, {"server-round": 1})

    # Assert
    assert count > 0 and "declined" not in metrics and probes
    with work_turn(registry, "serving's export", 0):  # given back when the round ended
        pass


def test_a_node_declines_a_round_while_serving_exports(tiny_llama: Path, tmp_path: Path):
    # Prepare: serving's export (another process) holds the turn past the node's wait
    cfg = tiny_config(tiny_llama, round_timeout_s=1.0)  # the node waits half of it
    registry = tmp_path / "registry"
    registry.mkdir()
    journal = tmp_path / "j.jsonl"
    node_config = {"hospital": "h", "registry": str(registry), "journal": str(journal)}

    def load() -> HospitalNode:
        raise AssertionError("a node without its turn loaded its model")

    client = HospitalClient(cfg, node_config, load)
    parameters = [np.zeros(3, dtype=np.float32)]

    # Execute
    with holder(registry):
        fitted, count, metrics = client.fit(parameters, {"server-round": 3})
        _, scored, _ = client.evaluate(parameters, {"server-round": 3, "promote": True})

    # Assert
    assert count == 0 and scored == 0 and fitted == parameters
    assert "holds the work turn (waited 0.5 s)" in str(metrics["declined"])
    declined = [e for e in read_journal(journal) if e.event == "round_declined"]
    assert [e.fields["server_round"] for e in declined] == [3]
    assert "h's training in round 3 did not run" in declined[0].fields["reason"]


def test_a_hospital_that_requires_dp_declines_a_round_without_it(tiny_llama: Path, tmp_path: Path):
    journal = tmp_path / "j.jsonl"
    node_config = {"hospital": "h", "journal": str(journal), "require-dp": True}
    cfg, refusal = node_privacy(tiny_config(tiny_llama), node_config)

    def load() -> HospitalNode:
        raise AssertionError("a node that declines by policy loaded its model")

    client = HospitalClient(cfg, node_config, load, refusal)
    parameters = [np.ones(3, dtype=np.float32)]
    fitted, count, metrics = client.fit(parameters, {"server-round": 2})
    assert fitted == parameters and count == 0
    assert "trains only with DP-SGD (require_dp)" in str(metrics["declined"])
    declined = [e for e in read_journal(journal) if e.event == "round_declined"]
    assert [e.fields["server_round"] for e in declined] == [2]
    assert "the run has dp = false" in declined[0].fields["reason"]
