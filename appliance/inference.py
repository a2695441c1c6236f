"""Prediction: encoded windows -> per-word tag probabilities -> entity spans per note."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from appliance.cache import length_batches
from appliance.decoding import spans_from_tags, viterbi
from appliance.encoding import EncodedWindow, collate_ids, collate_states, encode_notes
from appliance.forward import full_logits, logits_from
from appliance.model import LoadedModel
from appliance.notes import EntitySpan, Note, WordSpan


@dataclass(frozen=True)
class NotePrediction:
    """Predicted word tags and entity spans of one note (words in text order)."""

    words: tuple[WordSpan, ...]
    tags: tuple[str, ...]
    spans: tuple[EntitySpan, ...]


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
    for batch in length_batches([len(w) for w in windows], batch_size):
        ids, mask, _ = collate_ids([windows[i] for i in batch], pad_id)
        if states is not None:
            hidden = collate_states([states[i] for i in batch])
            logits = logits_from(model, hidden, mask, first_layer)
        else:
            logits = full_logits(model, ids, mask)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, L)
        for row, i in enumerate(batch):
            w = windows[i]
            tokens = [w.word_token[j] for j in w.core_words]
            out[i] = log_probs[row, tokens].numpy()
    model.train(was_training)
    return out


def assemble(
    note_count: int,
    windows: Sequence[EncodedWindow],
    log_probs: Sequence[np.ndarray],
    tags: Sequence[str],
) -> list[NotePrediction]:
    """Join each note's window cores in order and decode its tags and spans."""
    words: list[list[WordSpan]] = [[] for _ in range(note_count)]
    rows: list[list[np.ndarray]] = [[] for _ in range(note_count)]
    for w, lp in zip(windows, log_probs, strict=True):
        words[w.note_index].extend(w.window.words[j] for j in w.core_words)
        rows[w.note_index].append(lp)
    predictions = []
    for index in range(note_count):
        matrix = np.concatenate(rows[index]) if rows[index] else np.zeros((0, len(tags)))
        path = viterbi(matrix, tags)
        word_tags = tuple(tags[k] for k in path)
        scores = [float(np.exp(matrix[n, k])) for n, k in enumerate(path)]
        spans = spans_from_tags(words[index], word_tags, scores)
        predictions.append(NotePrediction(tuple(words[index]), word_tags, tuple(spans)))
    return predictions


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

    def predict(self, notes: Sequence[Note]) -> list[NotePrediction]:
        windows = encode_notes(
            self.loaded.tokenizer, notes, None, self.max_tokens, self.context_tokens
        )
        log_probs = window_log_probs(self.loaded, windows, batch_size=self.batch_size)
        return assemble(len(notes), windows, log_probs, self.loaded.labels)

    def annotate(self, texts: Sequence[str]) -> list[tuple[EntitySpan, ...]]:
        notes = [Note(f"input-{i}", text) for i, text in enumerate(texts)]
        return [p.spans for p in self.predict(notes)]
