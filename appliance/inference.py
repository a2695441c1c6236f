"""Prediction: encoded windows -> per-word tag probabilities -> entity spans per note."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from appliance.collate import collate_ids, collate_states
from appliance.decoding import NotePrediction, assemble
from appliance.encoding import EncodedWindow, encode_notes, length_batches
from appliance.forward import full_logits, logits_from
from appliance.model import LoadedModel
from appliance.notes import EntitySpan, Note
from appliance.windows import right_context


@torch.no_grad()
def window_log_probs(
    loaded: LoadedModel,
    windows: Sequence[EncodedWindow],
    states: Sequence[torch.Tensor] | None = None,
    first_layer: int = 0,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Log-probabilities (core words, tags) for every window; from cached states if given."""
    model = loaded.model
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = [np.empty(0)] * len(windows)
    pad_id = int(loaded.tokenizer.pad_token_id)
    device = model.device
    for batch in length_batches([len(w) for w in windows], batch_size):
        ids, mask, _ = collate_ids([windows[i] for i in batch], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        if states is not None:
            hidden = collate_states([states[i] for i in batch]).to(device)
            logits = logits_from(model, hidden, mask, first_layer)
        else:
            logits = full_logits(model, ids, mask)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, L)
        for row, i in enumerate(batch):
            w = windows[i]
            tokens = [w.word_token[j] for j in w.core_words]
            out[i] = log_probs[row, tokens].cpu().numpy()
    model.train(was_training)
    return out


def spans_as_json(text: str, spans: Sequence[EntitySpan]) -> list[dict[str, object]]:
    """What `appliance annotate` prints: start, end (code points), label, score, text."""
    return [
        {
            "start": s.start,
            "end": s.end,
            "label": s.label,
            "score": round(s.score or 0.0, 4),
            "text": text[s.start : s.end],
        }
        for s in spans
    ]


class Annotator:
    """Annotate raw notes with a loaded model (the core of `appliance annotate`)."""

    def __init__(
        self, loaded: LoadedModel, max_tokens: int, context_tokens: int, batch_size: int = 8
    ) -> None:
        self.loaded = loaded
        self.max_tokens = max_tokens
        self.context_tokens = context_tokens
        self.batch_size = batch_size

    def windows(self, notes: Sequence[Note]) -> list[EncodedWindow]:
        """The notes' windows; a causal model's carry no right context (it would not read it)."""
        right = right_context(self.loaded.config.attention, self.context_tokens)
        return encode_notes(
            self.loaded.tokenizer, notes, None, self.max_tokens, self.context_tokens, right
        )

    def predict(self, notes: Sequence[Note]) -> list[NotePrediction]:
        windows = self.windows(notes)
        log_probs = window_log_probs(self.loaded, windows, batch_size=self.batch_size)
        return assemble(len(notes), windows, log_probs, self.loaded.labels)

    def annotate(self, texts: Sequence[str]) -> list[tuple[EntitySpan, ...]]:
        notes = [Note(f"input-{i}", text) for i, text in enumerate(texts)]
        return [p.spans for p in self.predict(notes)]
