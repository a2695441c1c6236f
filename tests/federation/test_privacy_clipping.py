"""DP-SGD's clipping statistics: every sampled window's gradient norm is seen once, equals the
norm of its own gradient, and the clipped share follows `dp_max_grad_norm`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.layers import LayerSelection
from appliance.objective import batch_loss
from appliance.training import Trainer, seed_everything
from federation.privacy import DPSGDPolicy
from federation.task import HospitalNode, load_for_training
from tests.conftest import tiny_train_config
from tests.federation.helpers import corpus, tiny_config


class Drawn(DPSGDPolicy):
    """Keeps the Poisson batches it draws."""

    drawn: list[list[int]]

    def batches(self, lengths, batch_size, gen):
        self.drawn = super().batches(lengths, batch_size, gen)
        return self.drawn


def _trainer(tiny_llama: Path, tmp_path: Path, micro: int) -> Trainer:
    _, loaded = load_for_training(tiny_config(tiny_llama), tmp_path, gpu=False)
    loaded.model.dropout.p = 0.0  # the same loss for a window alone or in a batch
    cfg = replace(tiny_train_config("top:2", 1, tmp_path / "act"), batch_size=20,
                  micro_batch_size=micro)  # fmt: skip
    return Trainer(loaded, LayerSelection.parse("top:2", loaded.num_layers), cfg, progress=False)


@pytest.mark.parametrize(("micro", "clipping"), [(1, "flat"), (64, "flat"), (5, "ghost")])
def test_every_sampled_window_has_one_norm_and_it_is_its_own_gradients(
    tiny_llama: Path, tmp_path: Path, micro: int, clipping: str
):
    notes = corpus(tmp_path / "c", 60, seed=1)
    trainer = _trainer(tiny_llama, tmp_path, micro)
    gen = torch.Generator().manual_seed(5)
    policy = Drawn(trainer.loaded.model, 1e-6, 1e6, 20, gen, clipping)
    trainer.policy = policy
    trainer.fit(notes, [])
    assert len(policy.norms) == sum(len(b) for b in policy.drawn) > 20
    assert policy.clipping_stats()["dp_clipped_share"] == 0.0
    # whatever shares its micro-batch, a window's per-sample gradient is its own loss's: the
    # first step's windows (shortest first) against plain backward passes at the start
    fresh = _trainer(tiny_llama, tmp_path / "fresh", micro)
    fresh.init_head(seed_everything(fresh.cfg.seed))
    windows = fresh.encode(notes)
    states, _ = fresh.prefix(windows)
    assert states is not None
    params = [p for p in fresh.loaded.model.parameters() if p.requires_grad]
    first = sorted(policy.drawn[0], key=lambda i: len(windows[i]))
    for index, norm in zip(first, policy.norms, strict=False):
        loss = batch_loss(fresh.loaded, [windows[index]], [states[index]], fresh.first, fresh.cfg)
        grads = torch.autograd.grad(loss, params)
        expected = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        assert norm == pytest.approx(float(expected), rel=1e-3)


def test_a_dp_round_reports_the_clipped_share_and_median_norm(tiny_llama: Path, tmp_path: Path):
    notes = corpus(tmp_path / "c", 60, seed=1)
    shares = {}
    for bound in (1e-6, 1e6):
        cfg = tiny_config(tiny_llama, dp=True, dp_noise_multiplier=1.0, dp_max_grad_norm=bound)
        node = HospitalNode.load(cfg, notes, tmp_path / f"node-{bound}", "h")
        metrics = node.train_round(node.initial_arrays(), 1).metrics
        shares[bound] = metrics["dp_clipped_share"]
        assert float(metrics["dp_median_grad_norm"]) > 0
    assert shares == {1e-6: 1.0, 1e6: 0.0}
    plain = HospitalNode.load(tiny_config(tiny_llama), notes, tmp_path / "plain", "h")
    assert "dp_clipped_share" not in plain.train_round(plain.initial_arrays(), 1).metrics
