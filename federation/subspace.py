"""DP-SGD in a public gradient subspace: each noisy step's gradient is projected onto the top
directions of the gradients of public notes, taken at the round's starting model.

DP-SGD's noise has the same norm in every direction of the trained weights, so its total norm
grows with the square root of their number (1.3 M for LoRA r16 on 8 layers), while the
gradients of real notes concentrate in a few directions. Projecting the noisy gradient onto
`rank` directions keeps most of their signal and only sqrt(rank / weights) of the noise. The
directions come from public notes and the round's global model alone, so the projection is
post-processing of the privatized gradient: it costs no ε (the idea of Zhou, Wu and Banerjee,
"Bypassing the ambient dimension", ICLR 2021, and Yu et al.'s GEP).

With `adaptive`, each step divides the projected gradient's coordinates in the basis by their
running root mean square (RMSprop's second moment, beta 0.999, bias-corrected) before mapping
them back: the node's SGD momentum then supplies Adam's first moment, so the pair is Adam in the
`rank` coordinates, where AdamW on the weights would rescale each weight and spread the step out
of the subspace again. The moments start afresh with each round's basis.

Memory: the per-window gradients of 2 x `rank` public windows and the basis, (3 x rank) x the
trained weights x 4 bytes while it is built (about 1 GB for rank 64 and LoRA r16 on top:8 of the
135M model), the basis alone (rank x weights x 4 bytes) while the round trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from appliance.notes import Note
from appliance.objective import batch_loss
from appliance.training import Trainer

BETA = 0.999  # the second moment's decay of an adaptive subspace step, as Adam's
EPS = 1e-8


class Subspace:
    """An orthonormal basis (rank x weights) of directions in the trained parameters; with
    `adaptive`, steps scaled per coordinate by the coordinates' running RMS."""

    def __init__(
        self, params: Sequence[torch.nn.Parameter], basis: torch.Tensor, adaptive: bool = False
    ) -> None:
        self.params, self.basis, self.adaptive = list(params), basis, adaptive
        self.square = torch.zeros(basis.shape[0])
        self.steps = 0

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in self.params]
        )

    def coordinates(self, flat: torch.Tensor) -> torch.Tensor:
        """The gradient's coordinates in the basis, divided by their running RMS when adaptive."""
        coords = self.basis @ flat
        if not self.adaptive:
            return coords
        self.steps += 1
        self.square.mul_(BETA).add_(coords.pow(2), alpha=1 - BETA)
        return coords / ((self.square / (1 - BETA**self.steps)).sqrt() + EPS)

    def project(self) -> None:
        """Replace the parameters' gradients by their projection onto the basis (scaled per
        coordinate when adaptive)."""
        projected = self.basis.T @ self.coordinates(self.flat_grad().float())
        offset = 0
        for param in self.params:
            size = param.numel()
            part = projected[offset : offset + size].view_as(param).to(param.dtype)
            if param.grad is None:
                param.grad = part
            else:
                param.grad.copy_(part)
            offset += size


def window_gradients(
    trainer: Trainer, notes: Sequence[Note], count: int, seed: int
) -> torch.Tensor:
    """Flat gradients (count x trained weights) of `count` windows of `notes`, drawn by `seed`,
    each its own mean token loss at the trainer's current weights (eval mode: no dropout)."""
    windows = trainer.encode(notes)
    if not windows:
        raise ValueError("the public notes have no windows to take gradient directions from")
    gen = torch.Generator().manual_seed(seed)
    chosen = [windows[i] for i in torch.randperm(len(windows), generator=gen)[:count].tolist()]
    states, _ = trainer.prefix(chosen)
    model = trainer.loaded.model
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    rows = []
    for index, window in enumerate(chosen):
        loss = batch_loss(
            trainer.loaded,
            [window],
            [states[index]] if states else None,
            trainer.first if states else 0,
            trainer.cfg,
        )
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.detach().flatten().float() for g in grads]))
    return torch.stack(rows)


def public_subspace(
    trainer: Trainer, notes: Sequence[Note], rank: int, seed: int, adaptive: bool = False
) -> Subspace:
    """The top-`rank` directions of the gradients of 2 x `rank` public windows (fewer when the
    gradients span fewer), from the eigenvectors of their Gram matrix."""
    if rank < 1:
        raise ValueError(f"the subspace rank must be >= 1, got {rank}")
    grads = window_gradients(trainer, notes, 2 * rank, seed)
    values, vectors = torch.linalg.eigh(grads @ grads.T)  # ascending
    order = values.argsort(descending=True)[:rank]
    order = order[values[order] > values.max() * 1e-6]  # directions the windows really span
    basis = (vectors[:, order] / values[order].sqrt()).T @ grads  # orthonormal rows
    params = [p for p in trainer.loaded.model.parameters() if p.requires_grad]
    return Subspace(params, basis, adaptive)
