"""Model outputs -> word tags -> character-offset entity spans.

Word tags are decoded with a BIO-constrained Viterbi pass (no `I-X` after `O` or after another
type), so every predicted span is well formed in strict IOB2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.encoding import EncodedWindow
from appliance.notes import EntitySpan, WordSpan


def allowed_transitions(tags: Sequence[str]) -> np.ndarray:
    """(L, L) boolean matrix: may tag j follow tag i?"""
    size = len(tags)
    allowed = np.ones((size, size), dtype=bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            kind = tag[2:]
            for i, prev in enumerate(tags):
                allowed[i, j] = prev in (f"B-{kind}", f"I-{kind}")
    return allowed


def start_allowed(tags: Sequence[str]) -> np.ndarray:
    return np.array([not tag.startswith("I-") for tag in tags])


def viterbi(log_probs: np.ndarray, tags: Sequence[str]) -> list[int]:
    """Best tag sequence under BIO constraints; `log_probs` is (N words, L tags)."""
    if len(log_probs) == 0:
        return []
    penalty = np.where(allowed_transitions(tags), 0.0, -np.inf)  # (L, L)
    score = log_probs[0] + np.where(start_allowed(tags), 0.0, -np.inf)
    back = np.zeros(log_probs.shape, dtype=np.int64)
    for n in range(1, len(log_probs)):
        total = score[:, None] + penalty  # (L prev, L next)
        back[n] = total.argmax(axis=0)
        score = total.max(axis=0) + log_probs[n]
    path = [int(score.argmax())]
    for n in range(len(log_probs) - 1, 0, -1):
        path.append(int(back[n, path[-1]]))
    return path[::-1]


def spans_from_tags(
    words: Sequence[WordSpan],
    word_tags: Sequence[str],
    scores: Sequence[float] | None = None,
) -> list[EntitySpan]:
    """Entity spans from word tags (lenient: a stray I- opens a span); score = mean word score."""
    spans: list[EntitySpan] = []
    current: list[int] = []
    label = ""

    def close() -> None:
        if current:
            score = float(np.mean([scores[j] for j in current])) if scores is not None else None
            spans.append(EntitySpan(words[current[0]][0], words[current[-1]][1], label, score))

    for j, tag in enumerate(word_tags):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current and kind == label:
            current.append(j)
            continue
        close()
        current, label = ([j], kind) if prefix in ("B", "I") else ([], "")
    close()
    return spans


@dataclass(frozen=True)
class NotePrediction:
    """Predicted word tags and entity spans of one note (words in text order)."""

    words: tuple[WordSpan, ...]
    tags: tuple[str, ...]
    spans: tuple[EntitySpan, ...]


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
