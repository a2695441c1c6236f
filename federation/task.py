"""A hospital's local side of a round: train the travelling part on its notes, score, package.

One `HospitalNode` lives for the whole process (a SuperNode's ClientApp or a simulated
hospital): it keeps the loaded base, the frozen-prefix cache, the privacy ledger and the top-k
residual, all under the hospital's state dir, so a restarted node resumes where it stopped.
Training is the core's `Trainer` through its public seams: FedProx's proximal term
(`extra_loss`), DP-SGD's `policy`, and the sentence task's `encoder`.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.config import ModelConfig, TrainConfig
from appliance.encoding import EncodedWindow
from appliance.evaluation import evaluate_predictions
from appliance.inference import Annotator
from appliance.layers import LayerSelection
from appliance.model import LoadedModel, base_parameters, load_model, resolve_source
from appliance.notes import Note
from appliance.package import save_package
from appliance.readers import read_notes
from appliance.sentence_task import as_sentence_classifier, encode_sentences, score_sentences
from appliance.training import Trainer, seed_everything
from federation import modes
from federation.compression import encode_update, wire_bytes
from federation.config import FederationConfig
from federation.daemon_config import LEDGER_FILE
from federation.privacy import DPSGDPolicy, PrivacyLedger
from federation.subspace import Subspace, public_subspace

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


@dataclass
class LocalUpdate:
    payload: Arrays
    num_examples: int
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    declined: str | None = None


def for_task(loaded: LoadedModel, cfg: FederationConfig) -> LoadedModel:
    """The loaded NER model, or for the sentence task the same model with its two-way head."""
    return as_sentence_classifier(loaded) if cfg.task == "sentence" else loaded


def load_for_training(
    cfg: FederationConfig, bases_dir: Path, gpu: bool
) -> tuple[FederationConfig, LoadedModel]:
    """`cfg` resolved for its base's size (`FederationConfig.for_base`: the ServerApp and the
    nodes resolve it alike) and the run's base as a hospital trains on it: the frozen part
    quantized as `cfg.base_quantization` says for that size, the task's head. The size is read
    from the base's config once; `bases_dir`: where a GGUF base is materialized."""
    parameters = base_parameters(resolve_source(cfg.base), bases_dir)
    cfg = cfg.for_base(parameters)
    quantization = cfg.base_quantization(parameters, gpu)
    model_cfg = ModelConfig(base=cfg.base, attention=cfg.attention, quantization=quantization)
    return cfg, for_task(load_model(model_cfg, cfg.labels, bases_dir, cfg.spec), cfg)


def seeded_start(trainer: Trainer, cfg: FederationConfig) -> list[str]:
    """The start every node and the server make alike: the seeded head init, then the mode's
    preparation (LoRA's A init from the same seed). Returns the travelling tensors' names."""
    trainer.init_head(seed_everything(cfg.seed))
    torch.manual_seed(cfg.seed)  # LoRA's A init: the same on every node
    modes.prepare(trainer.loaded.model, cfg, trainer.selection)
    return modes.travelling_names(trainer.loaded.model)


class HospitalNode:
    """One hospital: its notes, its model copy, its ledger and residuals (under `state_dir`)."""

    def __init__(
        self,
        cfg: FederationConfig,
        loaded: LoadedModel,
        notes: Sequence[Note],
        state_dir: Path,
        name: str,
        heldout: Sequence[Note],
        bases_dir: Path | None = None,
    ) -> None:
        self.cfg, self.loaded, self.name = cfg, loaded, name
        self.notes, self.heldout = list(notes), list(heldout)
        self.state_dir = state_dir
        self.bases_dir = Path(bases_dir or state_dir)  # where a GGUF base is materialized
        self.selection = LayerSelection.parse(cfg.spec, loaded.num_layers)
        self.trainer = Trainer(
            loaded,
            self.selection,
            self._train_config(0),
            progress=False,
            fresh_head=False,
            encoder=self._sentence_windows if cfg.task == "sentence" else None,
        )
        self.names = seeded_start(self.trainer, cfg)
        self.windows = len(self.trainer.encode(self.notes)) if self.notes else 0
        self.ledger = PrivacyLedger.open(
            state_dir / LEDGER_FILE, cfg.dp_epsilon_budget, cfg.dp_delta
        )
        self.residual = self._load_residual()
        self.dp_policy: DPSGDPolicy | None = None  # the last round's, for its clipping stats
        self._public: list[Note] | None = None  # dp-public-notes, read on first use

    @classmethod
    def load(
        cls,
        cfg: FederationConfig,
        notes: Sequence[Note],
        state_dir: Path,
        name: str,
        heldout: Sequence[Note] = (),
        bases_dir: Path | None = None,
    ) -> HospitalNode:
        """`bases_dir`: where a GGUF base is materialized (default: the node's state dir);
        `cfg` is resolved for the base's size (`load_for_training`)."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        bases = Path(bases_dir or state_dir)
        cfg, loaded = load_for_training(cfg, bases, torch.cuda.is_available())
        return cls(cfg, loaded, notes, state_dir, name, heldout, bases_dir)

    def _train_config(self, server_round: int) -> TrainConfig:
        c = self.cfg
        factor = c.round_lr_factor(server_round)
        return TrainConfig(
            optimizer=c.optimizer,
            layers=c.spec,
            labels=c.labels,
            epochs=c.local_epochs,
            batch_size=c.batch_size,
            micro_batch_size=c.micro_batch_size,
            learning_rate=c.learning_rate * factor,
            head_learning_rate=c.head_learning_rate * factor,
            patience=c.local_epochs + 1,
            seed=c.seed + server_round,
            max_tokens=c.max_tokens,
            context_tokens=c.context_tokens,
            cache_dir=str(self.state_dir / "activations"),
        )

    def initial_arrays(self) -> Arrays:
        return modes.get_arrays(self.loaded.model, self.names)

    def set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        modes.set_arrays(self.loaded.model, dict(arrays), self.names)

    def train_round(
        self,
        arrays: Mapping[str, np.ndarray],
        server_round: int,
        overrides: Mapping[str, Any] | None = None,
    ) -> LocalUpdate:
        """Train from the global `arrays`; return the (compressed) update, or a declined round."""
        started = time.perf_counter()
        if not self.notes:
            return LocalUpdate({}, 0, {"reason": "no local notes"}, declined="no local notes")
        step = self._dp_step()
        reason = self._over_budget(step)
        if reason:
            log.warning("node %s declines round %d: %s", self.name, server_round, reason)
            return LocalUpdate({}, 0, self._privacy_metrics() | {"reason": reason}, reason)
        self.set_arrays(arrays)
        reference = dict(arrays)  # as received (fp16 when compressed): upcast per tensor on use
        loss = self._fit(server_round, reference, overrides or {}, step[0] if step else 0.0)
        if step is not None:
            self.ledger.commit(server_round, step)
        new = modes.ModelArrays(self.loaded.model, self.names)  # read, tensor by tensor, now
        payload = encode_update(
            new,
            reference,
            self.cfg.compression,
            block=self.cfg.int8_block,
            fraction=self.cfg.topk_fraction,
            residual=self.residual,
        )
        if self.cfg.compression == "topk":
            self._save_residual()
        clipping = self.dp_policy.clipping_stats() if self.dp_policy else {}
        if step is not None:
            clipping["dp_noise"] = round(step[0], 4)
        metrics: dict[str, float | int | str] = {
            **clipping,
            "loss": loss,
            "train_seconds": round(time.perf_counter() - started, 3),
            "bytes_sent": wire_bytes(payload),
            "bytes_received": wire_bytes(dict(arrays)),
        }
        return LocalUpdate(payload, self.windows, metrics | self._privacy_metrics())

    def _over_budget(self, step: tuple[float, float, int] | None) -> str:
        """Why the round `step` would take must be declined ('': it may run)."""
        if step is None:
            return ""
        cfg, trained = self.cfg, len(self.ledger.rounds)
        if not cfg.dp_noise_multiplier and trained >= cfg.dp_rounds:
            return (
                f"privacy budget: {trained} of dp-rounds {cfg.dp_rounds} rounds trained; "
                f"epsilon {cfg.dp_epsilon_budget} was spread over them"
            )
        if self.ledger.projected(step) > cfg.dp_epsilon_budget:
            return (
                f"privacy budget: this round would reach epsilon "
                f"{self.ledger.projected(step):.3f} > budget {cfg.dp_epsilon_budget}"
            )
        return ""

    def _dp_step(self) -> tuple[float, float, int] | None:
        if not self.cfg.dp:
            return None
        rate, steps = DPSGDPolicy.planned(self.windows, self.cfg.batch_size, self.cfg.local_epochs)
        noise = self.cfg.dp_noise_multiplier
        if not noise:  # calibrated: this round's share of what is left of the budget
            left = self.cfg.dp_rounds - len(self.ledger.rounds)
            noise = self.ledger.calibrated_noise(rate, steps, left)
        return (noise, rate, steps)

    def _fit(
        self, server_round: int, reference: Arrays, overrides: Mapping[str, Any], noise: float
    ) -> float:
        trainer = self.trainer
        trainer.cfg = self._train_config(server_round)
        mu = float(overrides.get("proximal_mu", self.cfg.proximal_mu))
        trainer.extra_loss = None
        if self.cfg.strategy == "fedprox" and mu > 0:
            trainer.extra_loss = self._proximal_term(reference, mu)
        trainer.policy = self.dp_policy = None
        if self.cfg.dp:
            gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + server_round)
            trainer.policy = self.dp_policy = DPSGDPolicy(
                self.loaded.model,
                noise,
                self.cfg.dp_max_grad_norm,
                self.cfg.batch_size,
                gen,
                self.cfg.clipping,
                self._subspace(trainer),
            )
        result = trainer.fit(self.round_notes(server_round), [])
        if self.dp_policy is not None:
            self.dp_policy.subspace = None  # its basis is the round's: free it
        return float(result.history[-1].loss) if result.history else float("nan")

    def _subspace(self, trainer: Trainer) -> Subspace | None:
        """The round's public gradient subspace (dp-subspace), at the received global model."""
        if not self.cfg.dp_subspace:
            return None
        if self._public is None:
            self._public = read_notes(self.cfg.dp_public_notes).notes
        cfg = self.cfg
        return public_subspace(
            trainer, self._public, cfg.dp_subspace, cfg.seed, cfg.dp_subspace_adaptive
        )

    def round_notes(self, server_round: int) -> list[Note]:
        """The notes a round trains on: all, or with `local_fraction` < 1 the round's share of
        them in turn (fewer local steps per round; every note is used once per 1/fraction)."""
        fraction = self.cfg.local_fraction
        if fraction >= 1:
            return self.notes
        shares = max(1, round(1 / fraction))
        index = (server_round - 1) % shares
        return [n for i, n in enumerate(self.notes) if i % shares == index] or self.notes

    def _proximal_term(self, reference: Arrays, mu: float) -> Any:
        params = dict(self.loaded.model.named_parameters())
        anchors = [
            (params[n], torch.from_numpy(np.array(reference[n], np.float32))) for n in self.names
        ]

        def term() -> torch.Tensor:
            total = sum(((p - a) ** 2).sum() for p, a in anchors)
            return 0.5 * mu * torch.as_tensor(total)

        return term

    def _privacy_metrics(self) -> dict[str, float | int | str]:
        if not self.cfg.dp:
            return {}
        return {
            "eps_spent": round(self.ledger.epsilon_spent, 4),
            "eps_remaining": round(self.ledger.epsilon_remaining, 4),
            "eps_budget": self.cfg.dp_epsilon_budget,
        }

    def _sentence_windows(self, notes: Sequence[Note]) -> list[EncodedWindow]:
        return encode_sentences(self.loaded, notes, self.cfg.max_tokens, self.cfg.context_tokens)

    def score(self, arrays: Mapping[str, np.ndarray], notes: Sequence[Note]) -> dict[str, float]:
        """Strict entity F1 (and span F1) of the model with `arrays` on annotated `notes`; for
        the sentence task, F1 of its positive class (and precision, recall, accuracy)."""
        self.set_arrays(arrays)
        if self.cfg.task == "sentence":
            return score_sentences(self.loaded, notes, self.cfg.max_tokens, self.cfg.context_tokens)
        annotator = Annotator(self.loaded, self.cfg.max_tokens, self.cfg.context_tokens, 16)
        metrics = evaluate_predictions(notes, annotator.predict(notes))
        return {
            "f1": float(metrics["entity_strict"]["overall"]["f1"]),
            "span_f1": float(metrics["span_exact"]["overall"]["f1"]),
        }

    def evaluate(self, arrays: Mapping[str, np.ndarray]) -> tuple[int, dict[str, float]]:
        """Score the global model on this hospital's held-out notes."""
        if not self.heldout:
            return 0, {}
        return len(self.heldout), self.score(arrays, self.heldout)

    def write_package(self, arrays: Mapping[str, np.ndarray], path: Path) -> Path:
        """An appliance model package of the model with `arrays` (LoRA merged into its layers)."""
        if self.cfg.task != "ner":
            raise ValueError(f"task {self.cfg.task!r}: only NER models are packaged for serving")
        self.set_arrays(arrays)
        windowing = {"max_tokens": self.cfg.max_tokens, "context_tokens": self.cfg.context_tokens}
        training = {
            "federated": True,
            "mode": self.cfg.mode,
            "hospital": self.name,
            "compression": self.cfg.compression,
            "dp": self.cfg.dp,
        }
        tensors = modes.package_tensors(self.loaded.model, self.selection)
        return save_package(path, self.loaded, self.selection, windowing, training, tensors)

    def release_model(self) -> None:
        """Free the model and its trainer; the node cannot train or score after this. A
        ClientApp process ends with its message: its promotion step then loads the candidate and
        the current package into this memory instead of beside the node's model."""
        del self.trainer, self.loaded
        gc.collect()  # the model holds reference cycles

    def _load_residual(self) -> dict[str, np.ndarray]:
        path = self.state_dir / "topk-residual.npz"
        if self.cfg.compression != "topk" or not path.exists():
            return {}
        with np.load(path) as data:
            return {k: data[k] for k in data.files if k in self.names}

    def _save_residual(self) -> None:
        path = self.state_dir / "topk-residual.npz"
        tmp = path.with_name("topk-residual.tmp.npz")
        np.savez(tmp, **self.residual)  # type: ignore[arg-type]
        tmp.replace(path)
