"""Train the selected layers + head (optimizer, schedule and loss: `appliance.objective`),
with clipping, early stopping and per-epoch checkpoints."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from appliance import train_checkpoint
from appliance.cache import PrefixCache
from appliance.config import TrainConfig
from appliance.decoding import NotePrediction, assemble
from appliance.encoding import (
    IGNORE,
    EncodedWindow,
    encode_notes,
)
from appliance.evaluation import evaluate_predictions
from appliance.inference import window_log_probs
from appliance.layers import LayerSelection
from appliance.model import LoadedModel
from appliance.notes import Note
from appliance.objective import batch_loss, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    dev_f1: float
    train_seconds: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_dev_f1: float = 0.0
    cache_seconds: float = 0.0
    cache_hit: bool = False
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        for row, stats in zip(out["history"], self.history, strict=True):
            row["tokens_per_second"] = stats.tokens_per_second
        return out


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar length: sort within random pools of 50 batches, shuffle."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


Encoder = Callable[[Sequence[Note]], list[EncodedWindow]]  # notes -> labelled windows


class StepPolicy(Protocol):
    """How batches are drawn and steps taken; DP-SGD (federation.privacy) is one such policy."""

    def prepare(self, optimizer: torch.optim.Optimizer, windows: int) -> torch.optim.Optimizer:
        """Wrap the optimizer (e.g. per-sample clipping + noise) before an epoch loop."""
        ...

    def batches(
        self, lengths: Sequence[int], batch_size: int, gen: torch.Generator
    ) -> list[list[int]]:
        """One epoch of batches (window indices)."""
        ...

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to account privacy)."""
        ...

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | float) -> None:
        """The backward pass of one micro-batch from each window's own loss (`losses`, one per
        window) and the `extra_loss` term (0.0 for none)."""
        ...

    def accumulate(self, optimizer: torch.optim.Optimizer) -> None:
        """Called between the micro-batches of one batch: gather what the last backward pass
        gave (e.g. clip each sample's gradient and add it up) without taking a step."""
        ...

    def finish(self) -> None:
        """Called once training ends (e.g. to remove per-sample hooks)."""
        ...


class Trainer:
    """Fits one `LayerSelection` of a loaded model on annotated notes.

    Public seams, for federated rounds and other tasks:

    - `encoder` (constructor): labels the windows for another task (the sentence task) instead
      of NER's BIO tags; dev F1 is NER-only.
    - `extra_loss` (attribute, read at each step): a term added to the loss (FedProx's
      proximal term); None for none.
    - `policy` (attribute, read by `fit`): how batches are drawn and steps taken (DP-SGD's
      Poisson batches, per-sample clipping and noise); None for plain shuffled batches.
    - `checkpoint` (attribute, read by `fit`): a file `fit` saves its state to after every
      epoch and resumes from when it exists (`appliance.train_checkpoint`); None for none.
    - `init_head(gen)`: the seeded head init `fit` runs with `fresh_head`, for callers that
      start from it themselves (every federated node makes the same start).

    Without dev notes the last epoch's weights are kept.
    """

    extra_loss: Callable[[], torch.Tensor] | None = None
    policy: StepPolicy | None = None
    checkpoint: Path | None = None

    def __init__(
        self,
        loaded: LoadedModel,
        selection: LayerSelection,
        cfg: TrainConfig,
        progress: bool = True,
        fresh_head: bool = True,
        encoder: Encoder | None = None,
    ) -> None:
        self.loaded, self.selection, self.cfg, self.progress = loaded, selection, cfg, progress
        self.fresh_head = fresh_head
        self.encoder = encoder
        selection.apply(loaded.model)
        self.first = selection.first

    def init_head(self, gen: torch.Generator) -> None:
        """Seeded head init, so a run repeats whatever the RNG did while loading."""
        score = self.loaded.model.score
        std = float(getattr(self.loaded.model.config, "initializer_range", 0.02))
        with torch.no_grad():
            score.weight.copy_(torch.randn(score.weight.shape, generator=gen) * std)
            if score.bias is not None:
                score.bias.zero_()

    def encode(self, notes: Sequence[Note]) -> list[EncodedWindow]:
        if self.encoder is not None:
            return self.encoder(notes)
        return encode_notes(
            self.loaded.tokenizer,
            notes,
            self.loaded.labels,
            self.cfg.max_tokens,
            self.cfg.context_tokens,
        )

    def prefix(self, windows: list[EncodedWindow]) -> tuple[list[torch.Tensor] | None, bool]:
        if not self.cfg.use_cache or self.first == 0:
            return None, False
        cache = PrefixCache(self.loaded, self.first, self.cfg.cache_dir, self.progress)
        return cache.states(windows)

    def predict(
        self, notes: Sequence[Note], windows: list[EncodedWindow], states: list[torch.Tensor] | None
    ) -> list[NotePrediction]:
        """The model's entities for `notes` from their `windows` (and prefix `states`, if any)."""
        log_probs = window_log_probs(self.loaded, windows, states, self.first if states else 0)
        return assemble(len(notes), windows, log_probs, self.loaded.labels)

    def dev_f1(
        self, notes: Sequence[Note], windows: list[EncodedWindow], states: list[torch.Tensor] | None
    ) -> float:
        predictions = self.predict(notes, windows, states)
        return float(evaluate_predictions(notes, predictions)["entity_strict"]["overall"]["f1"])

    def fit(self, train_notes: Sequence[Note], dev_notes: Sequence[Note]) -> TrainResult:
        """Train; keep the weights of the epoch with the best dev F1."""
        gen = seed_everything(self.cfg.seed)
        if self.fresh_head:
            self.init_head(gen)
        train, dev = self.encode(train_notes), self.encode(dev_notes)
        if not train:
            raise ValueError("no training windows: the training notes are empty")
        result = TrainResult()
        started = time.perf_counter()
        train_states, hit = self.prefix(train)
        dev_states, _ = self.prefix(dev) if dev else (None, False)
        result.cache_seconds, result.cache_hit = time.perf_counter() - started, hit
        optimizer: torch.optim.Optimizer = build_optimizer(
            self.loaded.model, self.selection, self.cfg
        )
        if self.policy is not None:
            optimizer = self.policy.prepare(optimizer, len(train))
        steps = self.cfg.epochs * -(-len(train) // self.cfg.batch_size)
        scheduler = build_scheduler(optimizer, self.cfg, steps)
        best_state: dict[str, torch.Tensor] = {}
        stale, first = 0, 1
        mark = train_checkpoint.fingerprint(self.cfg, len(train))
        if self.checkpoint is not None:
            if self.policy is not None:
                raise ValueError("a checkpoint cannot resume a step policy's state (DP-SGD)")
            resumed = train_checkpoint.load(self.checkpoint, mark)
            if resumed is not None:
                first, stale, best_state = self._restore(resumed, optimizer, scheduler, gen, result)
        for epoch in range(first, self.cfg.epochs + 1):
            stats = self._epoch(epoch, train, train_states, optimizer, scheduler, gen)
            stats.dev_f1 = self.dev_f1(dev_notes, dev, dev_states) if dev else 0.0
            result.history.append(stats)
            log.info("epoch %d: loss %.4f dev F1 %.4f", epoch, stats.loss, stats.dev_f1)
            if not dev or not best_state or stats.dev_f1 > result.best_dev_f1:
                result.best_epoch, result.best_dev_f1, stale = epoch, stats.dev_f1, 0
                if dev:  # without a dev set the last epoch is kept: the model holds it already
                    best_state = copy.deepcopy(self.selection.trained_state(self.loaded.model))
            else:
                stale += 1
                result.stopped_early = stale >= self.cfg.patience
            if self.checkpoint is not None:
                self._save(mark, epoch, stale, best_state, optimizer, scheduler, gen, result)
            if result.stopped_early:
                break
        if self.policy is not None:
            self.policy.finish()
        optimizer.zero_grad(set_to_none=True)  # the last step's gradients: the trained part's size
        if best_state:
            self.loaded.model.load_state_dict(best_state, strict=False)
        self.loaded.model.eval()
        return result

    def _save(self, mark: str, epoch: int, stale: int, best: dict, optimizer: Any,
              scheduler: Any, gen: torch.Generator, result: TrainResult) -> None:  # fmt: skip
        """The state a later `fit` continues from after `epoch` (`checkpoint` set)."""
        assert self.checkpoint is not None
        trained = self.selection.trained_state(self.loaded.model)
        state = train_checkpoint.state_of(
            mark, epoch, stale, trained, best, optimizer, scheduler, gen, asdict(result)
        )
        train_checkpoint.save(self.checkpoint, state)

    def _restore(self, state: dict, optimizer: Any, scheduler: Any, gen: torch.Generator,
                 result: TrainResult) -> tuple[int, int, dict[str, torch.Tensor]]:  # fmt: skip
        """Put the saved state back; returns (first epoch to run, stale epochs, best tensors)."""
        train_checkpoint.restore(state, self.loaded.model, optimizer, scheduler, gen)
        for key, value in state["result"].items():
            setattr(result, key, value)
        result.history = [EpochStats(**h) for h in state["result"]["history"]]
        log.info("resuming after epoch %d from %s", state["epoch"], self.checkpoint)
        first = self.cfg.epochs + 1 if result.stopped_early else state["epoch"] + 1
        return first, int(state["stale"]), dict(state["best"])

    def _epoch(
        self,
        epoch: int,
        train: list[EncodedWindow],
        states: list[torch.Tensor] | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        gen: torch.Generator,
    ) -> EpochStats:
        model = self.loaded.model
        model.train()
        lengths = [len(w) for w in train]
        if self.policy is not None:
            batches = self.policy.batches(lengths, self.cfg.batch_size, gen)
        else:
            batches = epoch_batches(lengths, self.cfg.batch_size, gen)
        total_loss, tokens, started = 0.0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not self.progress)
        for batch in bar:
            if not batch:  # a Poisson-sampled batch can be empty: a step with no data
                if self.policy is not None:
                    self.policy.after_step()
                continue
            loss = self._step(batch, train, states, optimizer)
            scheduler.step()
            if self.policy is not None:
                self.policy.after_step()
            total_loss += loss
            tokens += sum(len(train[i]) for i in batch)
            rate = tokens / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
        seconds = time.perf_counter() - started
        return EpochStats(epoch, total_loss / max(len(batches), 1), 0.0, seconds, tokens)

    def _step(
        self,
        batch: list[int],
        train: list[EncodedWindow],
        states: list[torch.Tensor] | None,
        optimizer: torch.optim.Optimizer,
    ) -> float:
        """One optimizer step on `batch`, computed `micro_batch_size` windows at a time (shortest
        first, so little padding); returns the batch's mean token loss. Plain steps weight each
        micro-batch's mean loss by its labelled tokens, so the summed gradient is the batch's;
        with a policy (DP-SGD) `policy.backward` takes each micro-batch's per-window losses, its
        per-sample gradients are gathered by `policy.accumulate` and the last one's
        `optimizer.step` takes the step."""
        model = self.loaded.model
        ordered = sorted(batch, key=lambda i: len(train[i]))
        size = self.cfg.micro_batch_size
        chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        labelled = [sum(sum(1 for t in train[i].labels if t != IGNORE) for i in c) for c in chunks]
        total = max(sum(labelled), 1)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for index, chunk in enumerate(chunks):
            losses = batch_loss(
                self.loaded,
                [train[i] for i in chunk],
                [states[i] for i in chunk] if states else None,
                self.first if states else 0,
                self.cfg,
                per_window=self.policy is not None,
            )
            last = index == len(chunks) - 1
            extra = self.extra_loss() if self.extra_loss is not None and last else 0.0
            loss_sum += losses.mean().item() * labelled[index] / total
            if self.policy is None:
                (losses * (labelled[index] / total) + extra).backward()
                continue
            self.policy.backward(losses, extra)
            if not last:
                self.policy.accumulate(optimizer)
        if self.policy is None:  # DP-SGD clips per sample instead
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], self.cfg.max_grad_norm
            )
        optimizer.step()
        return loss_sum
