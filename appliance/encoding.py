"""Notes -> windows -> model token ids, with each word tied to the token that predicts it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from transformers import PreTrainedTokenizerBase

from appliance.notes import EntitySpan, Note, WordSpan
from appliance.windows import Window, make_windows, words_in_core

IGNORE = -100


@dataclass(frozen=True)
class EncodedWindow:
    """One window ready for the model.

    `word_token[j]` is the token whose logits predict word j of `window.words` (the token holding
    the word's last character: under causal attention it has seen the whole word).
    `core_words` are the indices of the words this window owns; only they get labels.
    """

    note_index: int
    window: Window
    input_ids: tuple[int, ...]
    word_token: tuple[int, ...]
    core_words: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def word_tags(words: Sequence[WordSpan], entities: Sequence[EntitySpan]) -> list[str]:
    """Gold IOB2 tag of each word from character-offset entities (a word inside a span is I-)."""
    tags = ["O"] * len(words)
    for entity in entities:
        inside = [j for j, (s, e) in enumerate(words) if s < entity.end and e > entity.start]
        for rank, j in enumerate(inside):
            tags[j] = f"{'B' if rank == 0 else 'I'}-{entity.label}"
    return tags


def token_counter(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """Estimate of a word's token count, as it appears after a space (memoized)."""

    @lru_cache(maxsize=200_000)
    def count(word: str) -> int:
        return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"])

    return count


def _encode_window(
    tokenizer: PreTrainedTokenizerBase,
    note: Note,
    note_index: int,
    window: Window,
    tag_ids: dict[str, int] | None,
) -> EncodedWindow:
    text = note.text[window.start : window.end]
    enc = tokenizer(
        text, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True
    )
    owner = [-1] * len(text)
    pairs = zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
    for t, ((s, e), special) in enumerate(pairs):
        if not special:
            for c in range(s, e):
                owner[c] = t
    word_token = tuple(owner[e - 1 - window.start] for _, e in window.words)
    if min(word_token, default=0) < 0:
        raise ValueError(f"note {note.note_id}: a word has no token (tokenizer offsets broken)")
    core = tuple(words_in_core(window))
    labels = [IGNORE] * len(enc["input_ids"])
    if tag_ids is not None:
        tags = word_tags(window.words, note.entities)
        for j in core:
            labels[word_token[j]] = tag_ids[tags[j]]
    return EncodedWindow(
        note_index, window, tuple(enc["input_ids"]), word_token, core, tuple(labels)
    )


def encode_notes(
    tokenizer: PreTrainedTokenizerBase,
    notes: Sequence[Note],
    tags: Sequence[str] | None,
    max_tokens: int,
    context_tokens: int,
    right_tokens: int | None = None,
) -> list[EncodedWindow]:
    """Window every note and tokenize each window; with `tags`, attach gold labels.

    `right_tokens` is the context after each core (default `context_tokens`; see `make_windows`).
    """
    tag_ids = {tag: i for i, tag in enumerate(tags)} if tags is not None else None
    count = token_counter(tokenizer)
    encoded: list[EncodedWindow] = []
    for index, note in enumerate(notes):
        for window in make_windows(note, count, max_tokens, context_tokens, right_tokens):
            encoded.append(_encode_window(tokenizer, note, index, window, tag_ids))
    return encoded


def pad_windows(
    windows: Sequence[EncodedWindow], pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded int64 (input_ids, attention_mask, labels), each (B, T)."""
    length = max(len(w) for w in windows)
    ids = np.full((len(windows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), length), dtype=np.int64)
    labels = np.full((len(windows), length), IGNORE, dtype=np.int64)
    for row, w in enumerate(windows):
        n = len(w)
        ids[row, :n] = w.input_ids
        mask[row, :n] = 1
        labels[row, :n] = w.labels
    return ids, mask, labels


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
