"""DP-SGD at a hospital: the ledger's ε is Opacus' own, the budget is enforced, it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from federation.privacy import DPSGDPolicy, PrivacyLedger
from federation.task import HospitalNode
from tests.federation.helpers import corpus, tiny_config


def test_ledger_epsilon_equals_opacus_accountant(tmp_path: Path):
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", 8.0, 1e-5)
    accountant = RDPAccountant()
    for server_round, (noise, rate, steps) in enumerate([(1.0, 0.05, 20), (1.2, 0.04, 25)], 1):
        ledger.commit(server_round, (noise, rate, steps))
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    assert ledger.epsilon_spent == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    resumed = PrivacyLedger.open(tmp_path / "ledger.json", 8.0, 1e-5)
    assert resumed.epsilon_spent == pytest.approx(ledger.epsilon_spent)
    with pytest.raises(ValueError, match="spent at delta 1e-05"):
        PrivacyLedger.open(tmp_path / "ledger.json", 8.0, 1e-6)
    (tmp_path / "ledger.json").write_text("{")
    with pytest.raises(ValueError, match="refusing to guess"):
        PrivacyLedger.open(tmp_path / "ledger.json", 8.0, 1e-5)


def test_calibrated_noise_spends_the_budget_over_the_rounds_left(tmp_path: Path):
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", 8.0, 1e-5)
    noise = ledger.calibrated_noise(0.2, 5, 10)
    assert 0.3 < noise < 1000
    ten = [(noise, 0.2, 5)] * 10
    assert ledger.projected((noise, 0.2, 50)) == pytest.approx(8.0, rel=0.01)
    assert PrivacyLedger(tmp_path / "x", 8.0, history=ten).epsilon_spent <= 8.0
    assert PrivacyLedger(tmp_path / "x", 8.0, history=[(noise * 0.99, 0.2, 50)]).epsilon_spent > 8
    # What was spent counts: after a costly first round the other nine get more noise each
    ledger.commit(1, (0.8, 0.2, 5))
    later = ledger.calibrated_noise(0.2, 5, 9)
    assert later > noise
    assert ledger.projected((later, 0.2, 45)) == pytest.approx(8.0, rel=0.01)
    # No rounds left is one round; a spent budget gives the ceiling, which the budget declines
    assert ledger.calibrated_noise(0.2, 5, 0) == ledger.calibrated_noise(0.2, 5, 1)
    spent = PrivacyLedger(tmp_path / "y", 1.0, history=[(0.5, 1.0, 100)])
    assert spent.calibrated_noise(0.2, 5, 3) == 1000.0
    assert spent.projected((1000.0, 0.2, 15)) > 1.0
    # A budget so large that the floor fits takes the floor
    assert PrivacyLedger(tmp_path / "z", 1e6).calibrated_noise(0.2, 5, 1) == 0.3


def test_calibrated_rounds_spend_the_budget_in_dp_rounds(tiny_llama: Path, tmp_path: Path):
    notes = corpus(tmp_path / "c", 40, seed=2)
    cfg = tiny_config(tiny_llama, dp=True, dp_rounds=3, dp_epsilon_budget=4.0, local_epochs=1)
    assert cfg.dp_noise_multiplier == 0  # calibrated is the default
    node = HospitalNode.load(cfg, notes, tmp_path / "node", "h")
    arrays = node.initial_arrays()
    noises = []
    for server_round in (1, 2, 3):
        update = node.train_round(arrays, server_round)
        assert update.declined is None
        noises.append(float(update.metrics["dp_noise"]))
    assert noises[0] == pytest.approx(noises[2], rel=0.01)  # the same size each round
    assert node.ledger.epsilon_spent == pytest.approx(4.0, rel=0.01)
    assert node.ledger.epsilon_spent <= 4.0
    assert [r["noise"] for r in node.ledger.rounds] == pytest.approx(noises, rel=1e-3)
    assert "dp-rounds 3" in str(node.train_round(arrays, 4).declined)  # the budget is spent


def test_dp_rounds_spend_then_decline_over_budget(tiny_llama: Path, tmp_path: Path):
    notes = corpus(tmp_path / "c", 60, seed=1)
    cfg = tiny_config(
        tiny_llama, dp=True, dp_noise_multiplier=1.5, dp_epsilon_budget=3.0, local_epochs=1
    )
    node = HospitalNode.load(cfg, notes, tmp_path / "node", "h")
    arrays = node.initial_arrays()
    first = node.train_round(arrays, 1)
    assert first.declined is None and 0 < float(first.metrics["eps_spent"]) < 3.0
    spent = node.ledger.epsilon_spent
    assert first.metrics["eps_spent"] == pytest.approx(spent, abs=1e-4)
    history = list(node.ledger.history)
    declined = None
    for server_round in range(2, 40):
        update = node.train_round(arrays, server_round)
        if update.declined:
            declined = update
            break
    assert declined is not None and "privacy budget" in declined.declined
    assert declined.payload == {} and declined.num_examples == 0
    assert node.ledger.epsilon_spent <= 3.0 and len(node.ledger.history) >= len(history)
    saved = json.loads((tmp_path / "node" / "privacy-ledger.json").read_text())
    restarted = HospitalNode.load(cfg, notes, tmp_path / "node", "h")
    assert restarted.ledger.epsilon_spent == pytest.approx(saved["epsilon_spent"])
    assert restarted.train_round(arrays, 99).declined
    assert np.isfinite(list(first.payload.values())[0]).all()


class Recording(DPSGDPolicy):
    """Keeps the gradient each noisy step hands the inner optimizer."""

    steps: list[dict[str, torch.Tensor]]

    def prepare(self, optimizer, windows):
        self.steps = []
        dp = super().prepare(optimizer, windows)
        names = {id(p): n for n, p in self.model.named_parameters()}

        def record(inner, args, kwargs):
            self.steps.append(
                {names[id(p)]: p.grad.clone() for p in dp.params if p.grad is not None}
            )

        dp.original_optimizer.register_step_pre_hook(record)
        return dp


def test_a_dp_batch_in_micro_batches_clips_each_sample_and_steps_once(
    tiny_llama: Path, tmp_path: Path
):
    from dataclasses import replace

    from appliance.layers import LayerSelection
    from appliance.training import Trainer
    from federation.task import load_for_training
    from tests.conftest import tiny_train_config

    notes = corpus(tmp_path / "c", 60, seed=1)
    seen = {}
    for micro, clipping in ((64, "flat"), (4, "flat"), (4, "ghost"), (64, "ghost")):
        _, loaded = load_for_training(tiny_config(tiny_llama), tmp_path, gpu=False)
        loaded.model.dropout.p = 0.0  # the head's dropout masks differ with the batch's shape
        cfg = replace(tiny_train_config("top:2", 1, tmp_path / "act"), batch_size=20,
                      micro_batch_size=micro)  # fmt: skip
        selection = LayerSelection.parse("top:2", loaded.num_layers)
        trainer = Trainer(loaded, selection, cfg, progress=False)
        gen = torch.Generator().manual_seed(5)
        policy = Recording(loaded.model, 1e-6, 0.05, 20, gen, clipping)
        trainer.policy = policy
        trainer.fit(notes, [])
        assert policy.steps_taken == 3 and len(policy.steps) == 3
        seen[micro, clipping] = policy.steps
    # micro-batches, and ghost clipping (norms without per-sample gradients), give the same step
    for other in ((4, "flat"), (4, "ghost"), (64, "ghost")):
        for whole, parts in zip(seen[64, "flat"], seen[other], strict=True):
            assert whole and set(parts) == set(whole)
            for name, grad in whole.items():
                torch.testing.assert_close(parts[name], grad, rtol=1e-4, atol=1e-6)
    for whole in seen[64, "flat"]:
        assert (
            max(float(g.norm()) for g in whole.values()) <= 2 * 0.05
        )  # clipped: a Poisson batch ~20


def test_per_layer_clipping_bounds_every_tensor_by_its_share_and_spends_the_same(
    tiny_llama: Path, tmp_path: Path
):
    from dataclasses import replace

    from appliance.layers import LayerSelection
    from appliance.training import Trainer
    from federation.task import load_for_training
    from tests.conftest import tiny_train_config

    notes = corpus(tmp_path / "c", 60, seed=1)
    largest = {}
    for clipping in ("flat", "per-layer"):
        _, loaded = load_for_training(tiny_config(tiny_llama), tmp_path, gpu=False)
        cfg = replace(tiny_train_config("top:2", 1, tmp_path / "act"), batch_size=60)
        selection = LayerSelection.parse("top:2", loaded.num_layers)
        trainer = Trainer(loaded, selection, cfg, progress=False)
        gen = torch.Generator().manual_seed(5)
        policy = Recording(loaded.model, 1e-6, 0.05, 60, gen, clipping)
        trainer.policy = policy
        trainer.fit(notes, [])
        step = policy.steps[0]
        share = 0.05 / len(step) ** 0.5
        largest[clipping] = max(float(g.norm()) / share for g in step.values())
    # batch 60 of 60 notes: every note in every step, so the mean of clipped gradients is
    # bounded by the clip itself; one flat norm lets some tensors take more than their share
    assert largest["per-layer"] <= 1.0 + 1e-3
    assert largest["flat"] > 1.2
    for clipping in ("flat", "per-layer", "ghost", "auto"):
        node_cfg = tiny_config(tiny_llama, dp=True, dp_noise_multiplier=1.5, dp_clipping=clipping)
        node = HospitalNode.load(node_cfg, notes, tmp_path / clipping, "h")
        update = node.train_round(node.initial_arrays(), 1)
        assert update.declined is None
        assert node.dp_policy is not None
        assert node.dp_policy.clipping == ("ghost" if clipping == "auto" else clipping)  # layers
        largest[clipping] = float(update.metrics["eps_spent"])
    assert largest["flat"] == largest["per-layer"] == largest["ghost"] == largest["auto"] > 0
    # auto: flat for LoRA (its memory is the stored inputs either way, flat is faster)
    assert tiny_config(tiny_llama, mode="lora").clipping == "flat"
    assert tiny_config(tiny_llama, mode="full").clipping == "ghost"
    assert tiny_config(tiny_llama, mode="lora", dp_clipping="ghost").clipping == "ghost"
    with pytest.raises(ValueError, match="dp-clipping 'layer'"):
        tiny_config(tiny_llama, dp_clipping="layer")


class FirstHeadStep(DPSGDPolicy):
    """Keeps the head's weight and gradient before and after the inner optimizer's first step."""

    moves: list[tuple[torch.Tensor, torch.Tensor]]

    def prepare(self, optimizer, windows):
        self.moves = []
        head = self.model.score.weight

        def keep(inner, args, kwargs):
            if len(self.moves) < 2:
                self.moves.append((head.detach().clone(), head.grad.clone()))

        assert isinstance(optimizer, torch.optim.SGD)
        optimizer.register_step_pre_hook(keep)
        optimizer.register_step_post_hook(keep)
        return super().prepare(optimizer, windows)


def test_dp_sgd_with_the_sgd_optimizer_steps_by_the_noisy_gradient(tiny_llama: Path, tmp_path):
    """With `optimizer = "sgd"` a DP step moves the head by the learning rate times the clipped,
    noised gradient Opacus hands it (AdamW would move every weight by ~ the rate)."""
    from dataclasses import replace

    from appliance.layers import LayerSelection
    from appliance.training import Trainer
    from federation.task import load_for_training
    from tests.conftest import tiny_train_config

    _, loaded = load_for_training(tiny_config(tiny_llama), tmp_path, gpu=False)
    cfg = replace(tiny_train_config("top:2", 1, tmp_path / "act"), batch_size=20,
                  optimizer="sgd", learning_rate=0.5, head_learning_rate=0.5)  # fmt: skip
    trainer = Trainer(loaded, LayerSelection.parse("top:2", loaded.num_layers), cfg, progress=False)
    policy = FirstHeadStep(loaded.model, 1.0, 0.05, 20, torch.Generator().manual_seed(5))
    trainer.policy = policy
    trainer.fit(corpus(tmp_path / "c", 60, seed=1), [])
    (start, noisy), (end, _) = policy.moves
    assert float(noisy.abs().max()) > 0
    torch.testing.assert_close(start - end, 0.5 * noisy, rtol=1e-4, atol=1e-7)
