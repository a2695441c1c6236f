"""Notes -> windows -> model token ids, with each word tied to the token that predicts it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """Gold IOB2 tag of each of `words` (a note's, or a window's) from character-offset entities.

    A word inside a span is I-; the first is B- unless the span began before `words` do (an
    entity that a window boundary cuts, e.g. inside a long word cut into pieces, goes on as I-).
    """
    tags = ["O"] * len(words)
    for entity in entities:
        inside = [j for j, (s, e) in enumerate(words) if s < entity.end and e > entity.start]
        for rank, j in enumerate(inside):
            begins = rank == 0 and (j > 0 or words[j][0] <= entity.start)
            tags[j] = f"{'B' if begins else 'I'}-{entity.label}"
    return tags


def special_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. BOS, EOS)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next(
        (i for i in range(len(framed)) if framed[i : i + len(plain)] == plain),
        None,
    )
    if at is None:
        raise ValueError("the tokenizer's special tokens wrap a text in an unexpected way")
    return list(framed[:at]), list(framed[at + len(plain) :])


def _encode_window(
    note: Note,
    note_index: int,
    window: Window,
    note_ids: Sequence[int],
    frame: tuple[list[int], list[int]],
    tag_ids: dict[str, int] | None,
) -> EncodedWindow:
    prefix, suffix = frame
    first, last = window.tokens
    input_ids = (*prefix, *note_ids[first:last], *suffix)
    word_token = tuple(len(prefix) + t - first for t in window.word_tokens)
    core = tuple(words_in_core(window))
    labels = [IGNORE] * len(input_ids)
    if tag_ids is not None:
        tags = word_tags(window.words, note.entities)
        for j in core:
            labels[word_token[j]] = tag_ids[tags[j]]
    return EncodedWindow(note_index, window, input_ids, word_token, core, tuple(labels))


def encode_notes(
    tokenizer: PreTrainedTokenizerBase,
    notes: Sequence[Note],
    tags: Sequence[str] | None,
    max_tokens: int,
    context_tokens: int,
    right_tokens: int | None = None,
) -> list[EncodedWindow]:
    """Window every note and give each window its model token ids; with `tags`, gold labels.

    Each note is tokenized once, whole; a window reads a slice of those tokens between the
    tokenizer's special tokens, so no window ever exceeds `max_tokens` (specials included).
    `right_tokens` is the context after each core (default `context_tokens`; see `make_windows`).
    """
    tag_ids = {tag: i for i, tag in enumerate(tags)} if tags is not None else None
    frame = special_frame(tokenizer)
    room = max_tokens - len(frame[0]) - len(frame[1])
    encoded: list[EncodedWindow] = []
    if not notes:
        return encoded
    batch = tokenizer(
        [note.text for note in notes], add_special_tokens=False, return_offsets_mapping=True
    )
    for index, note in enumerate(notes):
        ids, offsets = batch["input_ids"][index], batch["offset_mapping"][index]
        for window in make_windows(note, offsets, room, context_tokens, right_tokens):
            encoded.append(_encode_window(note, index, window, ids, frame, tag_ids))
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
