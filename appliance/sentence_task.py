"""A sentence-level task beside NER: does the sentence state a chemical-induced disease?

The label is derived from the NER annotations by a stated rule (`sentence_label`): a sentence is
positive when it mentions at least one Chemical and at least one Disease and contains a causal
cue word (`CAUSAL_CUE`). BC5CDR's own chemical-induced-disease relations are document-level and
not in the vendored IOB files, so this rule stands in for them.

The classifier is the same `LlamaForTokenClassification` with a two-way head read at the
sentence's last word, which is how `LlamaForSequenceClassification` pools (last non-pad token);
the layers above the frozen prefix attend both ways, so that token sees the whole sentence. The
windows carry one label each, so training, the prefix cache, DP-SGD and federated aggregation
run unchanged on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from appliance.encoding import IGNORE, EncodedWindow, encode_notes
from appliance.inference import window_log_probs
from appliance.model import LoadedModel
from appliance.notes import Note

SENTENCE_LABELS = ("no", "yes")  # class ids 0 and 1
CAUSAL_CUE = re.compile(
    r"induc|caus|provok|associated with|toxicit|due to|adverse|side effect", re.IGNORECASE
)


def sentence_label(note: Note) -> int:
    """1 when the sentence has a Chemical, a Disease and a causal cue word; else 0."""
    kinds = {e.label for e in note.entities}
    return int({"Chemical", "Disease"} <= kinds and bool(CAUSAL_CUE.search(note.text)))


def as_sentence_classifier(loaded: LoadedModel) -> LoadedModel:
    """The same model with a fresh two-way head (`no`, `yes`) in place of the tag head."""
    model = loaded.model
    old = model.score
    model.score = torch.nn.Linear(old.in_features, len(SENTENCE_LABELS), bias=False).to(
        device=old.weight.device, dtype=old.weight.dtype
    )
    model.num_labels = model.config.num_labels = len(SENTENCE_LABELS)
    model.config.id2label = dict(enumerate(SENTENCE_LABELS))
    model.config.label2id = {name: i for i, name in enumerate(SENTENCE_LABELS)}
    return replace(loaded, labels=SENTENCE_LABELS)


def encode_sentences(
    loaded: LoadedModel, notes: Sequence[Note], max_tokens: int, context_tokens: int
) -> list[EncodedWindow]:
    """One labelled window per note: its last window, the label on its last word's token.

    A note longer than one window is classified from its last window (which carries
    `context_tokens` of what precedes it); BC5CDR sentences fit in one.
    """
    windows = encode_notes(loaded.tokenizer, notes, None, max_tokens, context_tokens)
    last: dict[int, EncodedWindow] = {}
    for window in windows:
        last[window.note_index] = window
    out = []
    for index in sorted(last):
        window = last[index]
        labels = [IGNORE] * len(window)
        labels[window.word_token[window.core_words[-1]]] = sentence_label(notes[index])
        out.append(replace(window, labels=tuple(labels)))
    return out


def predict_sentences(
    loaded: LoadedModel, notes: Sequence[Note], max_tokens: int, context_tokens: int
) -> np.ndarray:
    """P(yes) for every note."""
    windows = encode_sentences(loaded, notes, max_tokens, context_tokens)
    log_probs = window_log_probs(loaded, windows)
    out = np.zeros(len(notes))
    for window, rows in zip(windows, log_probs, strict=True):
        out[window.note_index] = float(np.exp(rows[-1][1]))
    return out


def sentence_scores(gold: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    """Precision, recall and F1 of the positive class, and accuracy."""
    p, r, f, _ = precision_recall_fscore_support(
        gold, predicted, average="binary", pos_label=1, zero_division=0
    )
    return {
        "f1": float(f),
        "precision": float(p),
        "recall": float(r),
        "accuracy": float(accuracy_score(gold, predicted)),
    }


def score_sentences(
    loaded: LoadedModel, notes: Sequence[Note], max_tokens: int, context_tokens: int
) -> dict[str, float]:
    """The model's scores on annotated `notes` (gold from `sentence_label`)."""
    probs = predict_sentences(loaded, notes, max_tokens, context_tokens)
    gold = [sentence_label(n) for n in notes]
    return sentence_scores(gold, (probs >= 0.5).astype(int).tolist())
