"""Tiny hospitals improve in simulation, in every mode; bytes are what the payloads weigh."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from federation.partition import partition
from federation.simulation import simulate
from tests.federation.helpers import corpus, tiny_config


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fed-corpus")
    notes = corpus(root, 150, seed=1)
    return partition(notes, 3, "dirichlet", alpha=0.5, seed=3), corpus(root, 40, seed=2)


@pytest.mark.parametrize(
    ("mode", "compression", "strategy"),
    [
        ("layers", "none", "fedavg"),
        ("lora", "int8", "fedavg"),
        ("full", "fp16", "fedavg"),
        ("layers", "topk", "fedavg"),
        ("layers", "none", "fedprox"),
    ],
)
def test_hospitals_improve(
    tiny_llama: Path, tmp_path: Path, split, mode: str, compression: str, strategy: str
):
    parts, test = split
    extra: dict[str, object] = {"topk_fraction": 0.2} if compression == "topk" else {}
    if strategy == "fedprox":
        extra["proximal_mu"] = 0.1
    cfg = tiny_config(tiny_llama, mode=mode, compression=compression, strategy=strategy, **extra)
    result = simulate(cfg, parts, test, tmp_path)
    f1 = [r.test_f1 for r in result.rounds]
    assert f1[-1] > result.initial_f1 + 0.3, (result.initial_f1, f1)
    first = result.rounds[0]
    assert not first.rejected and not first.declined
    assert all(b > 0 for b in first.bytes_up.values())


def test_fedprox_keeps_local_weights_closer_to_the_global_ones(tiny_llama: Path, tmp_path: Path):
    from federation.task import HospitalNode
    from tests.federation.helpers import corpus

    notes = corpus(tmp_path / "c", 60, seed=1)
    drift = {}
    for mu in (0.0, 50.0):
        cfg = tiny_config(tiny_llama, strategy="fedprox", proximal_mu=mu, local_epochs=2)
        node = HospitalNode.load(cfg, notes, tmp_path / f"n{mu}", "h")
        start = node.initial_arrays()
        update = node.train_round(start, 1)
        drift[mu] = sum(float(((update.payload[k] - start[k]) ** 2).sum()) for k in start)
    assert drift[50.0] < 0.5 * drift[0.0], drift


def test_local_fraction_rotates_shares_and_short_rounds_still_learn(
    tiny_llama: Path, tmp_path: Path, split
):
    from federation.task import HospitalNode

    parts, test = split
    cfg = tiny_config(tiny_llama, rounds=6, local_epochs=1, local_fraction=1 / 3)
    node = HospitalNode.load(cfg, parts[0], tmp_path / "n", "h")
    shares = [node.round_notes(r) for r in (1, 2, 3)]
    assert sorted(n.note_id for s in shares for n in s) == sorted(n.note_id for n in parts[0])
    assert node.round_notes(4) == shares[0]
    result = simulate(cfg, parts, test, tmp_path / "sim", score_every=3)
    f1 = [r.test_f1 for r in result.rounds]
    assert [i for i, x in enumerate(f1) if x == x] == [2, 5]  # NaN (unscored) elsewhere
    assert f1[-1] > result.initial_f1 + 0.3, (result.initial_f1, f1)


def test_local_fraction_is_validated_and_refused_with_dp(tiny_llama: Path):
    with pytest.raises(ValueError, match=r"local-fraction 0: must be in \(0, 1\]"):
        tiny_config(tiny_llama, local_fraction=0)
    with pytest.raises(ValueError, match="dp with local-fraction < 1"):
        tiny_config(tiny_llama, local_fraction=0.5, dp=True)


def test_the_sentence_task_is_learnt_federated_the_same_way(tiny_llama: Path, tmp_path: Path):
    from federation.server_app import initial_global
    from federation.task import HospitalNode
    from tests.appliance.test_sentence_task import cue_corpus

    parts = partition(cue_corpus(160, seed=1), 3, "iid", alpha=0.5, seed=3)
    test = cue_corpus(40, seed=2)
    cfg = tiny_config(tiny_llama, task="sentence", rounds=3, local_epochs=5)
    result = simulate(cfg, parts, test, tmp_path / "sim")
    f1 = [r.test_f1 for r in result.rounds]
    assert f1[-1] >= 0.9 and f1[-1] > result.initial_f1 + 0.3, (result.initial_f1, f1)
    node = HospitalNode.load(cfg, parts[0], tmp_path / "node", "h")
    resolved, names, initial = initial_global(cfg, tmp_path / "server")
    assert resolved == node.cfg  # the server resolves the run config as the node does
    assert names == node.names and initial["score.weight"].shape[0] == 2
    assert all((initial[k] == v).all() for k, v in node.initial_arrays().items())
    with pytest.raises(ValueError, match="only NER models are packaged"):
        node.write_package(initial, tmp_path / "package")


def test_a_warm_start_and_a_scorer_replace_the_seeded_start_and_the_node_score(
    tiny_llama: Path, tmp_path: Path, split
):
    parts, test = split
    cfg = tiny_config(tiny_llama, rounds=1)
    cold = simulate(cfg, parts, test, tmp_path / "cold")
    calls: list[int] = []

    def scorer(node, arrays, notes) -> float:
        calls.append(len(notes))
        return node.score(arrays, notes)["f1"]

    warm = simulate(cfg, parts, test, tmp_path / "warm", initial=cold.final_arrays, scorer=scorer)
    assert warm.initial_f1 == pytest.approx(cold.rounds[-1].test_f1)
    assert warm.initial_f1 > cold.initial_f1 + 0.3
    assert calls == [len(test), len(test)]


def test_a_run_resumed_from_a_round_checkpoint_ends_where_the_whole_run_ends(
    tiny_llama: Path, tmp_path: Path, split
):
    import numpy as np

    parts, test = split
    cfg = tiny_config(tiny_llama, dp=True, dp_noise_multiplier=1.0, dp_epsilon_budget=100.0)
    whole = simulate(cfg, parts, test, tmp_path / "whole")
    saved: dict[int, dict] = {}

    def keep(record, arrays) -> None:
        saved[record.server_round] = dict(arrays)

    simulate(replace(cfg, rounds=1), parts, test, tmp_path / "resumed", on_round=keep)
    resumed = simulate(cfg, parts, test, tmp_path / "resumed", initial=saved[1], first_round=2)
    assert [r.server_round for r in resumed.rounds] == [2]
    assert np.isnan(resumed.initial_f1)
    for name, tensor in whole.final_arrays.items():
        np.testing.assert_allclose(resumed.final_arrays[name], tensor, rtol=1e-5, atol=1e-6)
    assert resumed.rounds[-1].eps_spent == whole.rounds[-1].eps_spent
    assert resumed.rounds[-1].test_f1 == whole.rounds[-1].test_f1
