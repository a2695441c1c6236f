"""DP-SGD in a public gradient subspace: the basis is orthonormal and holds the public windows'
gradients, every noisy step lies in it, and the privacy spend is the plain DP-SGD's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.layers import LayerSelection
from appliance.training import Trainer
from federation.privacy import DPSGDPolicy
from federation.subspace import BETA, Subspace, public_subspace, window_gradients
from federation.task import HospitalNode, load_for_training
from tests.conftest import tiny_train_config
from tests.federation.helpers import corpus, tiny_config

RANK = 6


def _trainer(tiny_llama: Path, tmp_path: Path) -> Trainer:
    _, loaded = load_for_training(tiny_config(tiny_llama), tmp_path, gpu=False)
    cfg = replace(tiny_train_config("top:2", 1, tmp_path / "act"), batch_size=20)
    return Trainer(loaded, LayerSelection.parse("top:2", loaded.num_layers), cfg, progress=False)


def test_the_basis_is_orthonormal_and_holds_the_public_gradients(tiny_llama: Path, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path)
    public = corpus(tmp_path / "public", 40, seed=3)
    space = public_subspace(trainer, public, RANK, seed=1)
    assert space.rank == RANK
    torch.testing.assert_close(space.basis @ space.basis.T, torch.eye(RANK), atol=1e-4, rtol=0)
    grads = window_gradients(trainer, public, 2 * RANK, seed=1)  # the windows it was built from
    kept = (grads @ space.basis.T).norm(dim=1) / grads.norm(dim=1)
    weights = space.basis.shape[1]
    noise = torch.randn(weights, generator=torch.Generator().manual_seed(0))
    noise_kept = float((space.basis @ noise).norm() / noise.norm())
    assert float(kept.mean()) > 0.7  # the top directions of 2 x rank gradients hold most of them
    assert noise_kept < 3 * (RANK / weights) ** 0.5 < 0.1  # of isotropic noise, ~sqrt(rank/d)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        public_subspace(trainer, public, 0, seed=1)
    with pytest.raises(ValueError, match="no windows"):
        public_subspace(trainer, [], RANK, seed=1)


class Handed(DPSGDPolicy):
    """Keeps the flat gradient each noisy step hands the inner optimizer."""

    handed: list[torch.Tensor]

    def prepare(self, optimizer, windows):
        self.handed = []
        dp = super().prepare(optimizer, windows)
        params = [p for p in self.model.parameters() if p.requires_grad]

        def keep(inner, args, kwargs):
            self.handed.append(torch.cat([p.grad.flatten() for p in params]).clone())

        dp.original_optimizer.register_step_pre_hook(keep)
        return dp


def test_every_noisy_step_lies_in_the_subspace(tiny_llama: Path, tmp_path: Path):
    notes, public = corpus(tmp_path / "c", 60, seed=1), corpus(tmp_path / "p", 40, seed=3)
    norms = {}
    for projected in (False, True):
        trainer = _trainer(tiny_llama, tmp_path / str(projected))
        space = public_subspace(trainer, public, RANK, seed=1) if projected else None
        basis = None if space is None else space.basis.clone()
        gen = torch.Generator().manual_seed(5)
        policy = Handed(trainer.loaded.model, 1.0, 0.05, 20, gen, subspace=space)
        trainer.policy = policy
        trainer.fit(notes, [])
        assert len(policy.handed) == 3
        norms[projected] = sum(float(g.norm()) for g in policy.handed)
        if basis is not None:
            for grad in policy.handed:
                torch.testing.assert_close(basis.T @ (basis @ grad), grad, atol=1e-6, rtol=1e-4)
    assert norms[True] < 0.2 * norms[False]  # the noise outside the subspace is gone


def test_an_adaptive_step_divides_each_coordinate_by_its_running_rms():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(5, 4)), torch.nn.Parameter(torch.zeros(7))]
    basis = torch.linalg.qr(torch.randn(27, 3, generator=gen)).Q.T  # 3 orthonormal rows
    space = Subspace(params, basis, adaptive=True)
    grads = [torch.randn(27, generator=gen) * scale for scale in (1.0, 10.0, 0.1)]
    square = torch.zeros(3)
    for step, flat in enumerate(grads, start=1):
        params[0].grad, params[1].grad = flat[:20].view(5, 4).clone(), flat[20:].clone()
        space.project()
        coords = basis @ flat
        square = BETA * square + (1 - BETA) * coords**2
        expected = basis.T @ (coords / (square / (1 - BETA**step)).sqrt())
        torch.testing.assert_close(space.flat_grad(), expected, atol=1e-5, rtol=1e-4)
        if step == 1:  # the first step moves every coordinate by one, whatever the scale
            torch.testing.assert_close((basis @ space.flat_grad()).abs(), torch.ones(3))
    plain = Subspace(params, basis)
    params[0].grad, params[1].grad = grads[0][:20].view(5, 4).clone(), grads[0][20:].clone()
    plain.project()
    torch.testing.assert_close(space.flat_grad(), basis.T @ (basis @ grads[0]), atol=1e-5, rtol=0)


def test_a_node_projects_at_the_same_privacy_spend(tiny_llama: Path, tmp_path: Path):
    notes = corpus(tmp_path / "c", 60, seed=1)
    corpus(tmp_path / "p", 40, seed=3)  # the public notes file
    spent = {}
    for rank, adaptive in ((0, False), (RANK, False), (RANK, True)):
        path = str(tmp_path / "p" / "notes-3.jsonl") if rank else ""
        optimizer = "sgd" if adaptive else "adamw"
        cfg = tiny_config(tiny_llama, dp=True, dp_subspace=rank, dp_public_notes=path,
                          dp_subspace_adaptive=adaptive, optimizer=optimizer)  # fmt: skip
        node = HospitalNode.load(cfg, notes, tmp_path / f"node-{rank}-{adaptive}", "h")
        update = node.train_round(node.initial_arrays(), 1)
        assert update.declined is None and update.payload
        spent[rank, adaptive] = update.metrics["eps_spent"]
        assert node.dp_policy is not None and node.dp_policy.subspace is None  # freed
    assert spent[0, False] == spent[RANK, False] == spent[RANK, True] > 0
    for overrides, message in (
        ({"dp": True, "dp_subspace": -1}, "dp-subspace -1: must be >= 0"),
        ({"dp_subspace": 4, "dp_public_notes": "p.jsonl"}, "dp-subspace without dp"),
        ({"dp": True, "dp_subspace": 4}, "needs dp-public-notes"),
        ({"dp": True, "dp_subspace_adaptive": True, "optimizer": "sgd"}, "without dp-subspace"),
        (
            {"dp": True, "dp_subspace": 4, "dp_public_notes": "p", "dp_subspace_adaptive": True},
            "adaptive with optimizer adamw: it needs sgd",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            tiny_config(tiny_llama, **overrides)


def test_a_warm_start_is_made_for_a_run_that_projects(tiny_llama: Path, tmp_path: Path):
    from federation.warm_start import make_warm_start

    public = corpus(tmp_path / "p", 40, seed=3)
    cfg = tiny_config(tiny_llama, dp=True, dp_subspace=RANK,
                      dp_public_notes=str(tmp_path / "p" / "notes-3.jsonl"))  # fmt: skip
    made = make_warm_start(cfg, public, 1, tmp_path / "warm.npz", tmp_path)
    assert (tmp_path / "warm.npz").exists() and made["tensors"] > 0
