"""Cut a note into overlapping windows that fit a model's context.

Each window has a *core* (the characters, hence the words, it predicts) and up to
``context_tokens`` tokens' worth of neighbouring words before it and ``right_tokens`` after it
that it only reads. The cores of a note's windows tile its text: every character and every word
belongs to exactly one core. A causal model never reads what follows a word, so its windows carry
no right context (`right_context`); that context would cost compute and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import spacy
from spacy.language import Language
from spacy.tokens import Doc

from appliance.notes import Note, WordSpan

_MAX_TEXT_CHARS = 100_000_000  # spaCy's default 1M-char guard is for memory-hungry pipelines


@dataclass(frozen=True)
class Window:
    """A slice of a note for one model pass.

    ``[start, end)`` is the window text (first to last word, context included).
    ``[core_start, core_end)`` is the character range this window owns; the core ranges of a note's
    windows tile ``[0, len(text))``. A core range may reach past the window text only over
    whitespace (leading/trailing whitespace of the note, or the gap before the core).
    ``words`` are the absolute spans of the words inside ``[start, end)``; a word is in the core
    when its start lies in ``[core_start, core_end)``.
    """

    note_id: str
    start: int
    end: int
    core_start: int
    core_end: int
    words: tuple[WordSpan, ...]


@lru_cache(maxsize=1)
def _nlp() -> Language:
    nlp = spacy.blank("en")
    nlp.max_length = _MAX_TEXT_CHARS
    nlp.add_pipe("sentencizer")
    return nlp


def _check_words(note: Note, words: Sequence[WordSpan]) -> None:
    end = 0
    for start, stop in words:
        if not end <= start < stop <= len(note.text):
            raise ValueError(
                f"note {note.note_id}: word spans must be non-empty, in order, non-overlapping "
                f"and inside the text (bad span {start}-{stop})"
            )
        end = stop


def word_spans(note: Note) -> tuple[WordSpan, ...]:
    """The note's words: `note.words` if set, else blank-English spaCy tokens minus whitespace."""
    if note.words is not None:
        _check_words(note, note.words)
        return tuple(note.words)
    spans: list[WordSpan] = []
    for token in _nlp().make_doc(note.text):
        if token.is_space:
            continue
        start, end = token.idx, token.idx + len(token.text)
        while start < end and note.text[start].isspace():
            start += 1
        while end > start and note.text[end - 1].isspace():
            end -= 1
        if start < end:
            spans.append((start, end))
    return tuple(spans)


def sentence_spans(note: Note, words: Sequence[WordSpan]) -> list[tuple[int, int]]:
    """Sentences as half-open word-index ranges ``[first, last)`` covering all of `words`.

    spaCy's rule-based sentencizer runs on a Doc built from exactly these words, so splits align
    to them; a blank line (two or more newlines between words) also starts a sentence.
    """
    if not words:
        return []
    text = note.text
    gaps = [text[a_end:b_start] for (_, a_end), (b_start, _) in zip(words, words[1:], strict=False)]
    gaps.append(text[words[-1][1] :])
    nlp = _nlp()
    doc = Doc(nlp.vocab, words=[text[s:e] for s, e in words], spaces=[bool(g) for g in gaps])
    for i, gap in enumerate(gaps[:-1], start=1):
        if gap.count("\n") >= 2:
            doc[i].is_sent_start = True
    doc = nlp.get_pipe("sentencizer")(doc)
    return [(sent.start, sent.end) for sent in doc.sents]


def _pack_cores(
    sentences: Sequence[tuple[int, int]], counts: Sequence[int], budget: int
) -> list[tuple[int, int]]:
    """Greedy packing of whole sentences (split at words when too long) into word ranges."""
    cores: list[tuple[int, int]] = []
    first, used = 0, 0  # current core starts at word `first` and holds `used` tokens
    for s_start, s_end in sentences:
        size = sum(counts[s_start:s_end])
        if size > budget or used + size > budget:
            if s_start > first:
                cores.append((first, s_start))
            first, used = s_start, 0
        if size <= budget:
            used += size
            continue
        for j in range(s_start, s_end):  # an over-long sentence: split between words
            if used + counts[j] > budget and j > first:
                cores.append((first, j))
                first, used = j, 0
            used += counts[j]
    if first < len(counts):
        cores.append((first, len(counts)))
    return cores


def _extend(
    counts: Sequence[int], first: int, last: int, before: int, after: int
) -> tuple[int, int]:
    """Widen word range ``[first, last)`` by whole words, up to `before`/`after` tokens."""
    left, used = first, 0
    while left > 0 and used + counts[left - 1] <= before:
        left -= 1
        used += counts[left]
    right, used = last, 0
    while right < len(counts) and used + counts[right] <= after:
        used += counts[right]
        right += 1
    return left, right


def right_context(attention: str, context_tokens: int) -> int:
    """The context after a core that a model with `attention` reads: none when fully causal."""
    return 0 if attention == "causal" else context_tokens


def make_windows(
    note: Note,
    token_count: Callable[[str], int],
    max_tokens: int,
    context_tokens: int,
    right_tokens: int | None = None,
) -> list[Window]:
    """Windows over `note` whose word-token estimate stays within `max_tokens`.

    Cores hold at most ``max_tokens - context_tokens - right_tokens`` tokens (only a single word
    larger than that exceeds it, alone in its core); up to `context_tokens` tokens of context come
    before a core and `right_tokens` (default: `context_tokens`) after it, less when the core is
    over-size, so a window exceeds `max_tokens` only for such a word.
    """
    right = context_tokens if right_tokens is None else right_tokens
    budget = max_tokens - context_tokens - right
    if min(context_tokens, right) < 0 or budget < 1:
        raise ValueError(
            f"window budget too small: max_tokens ({max_tokens}) - context_tokens "
            f"({context_tokens}) - right context ({right}) must be >= 1, contexts >= 0"
        )
    words = word_spans(note)
    if not words:
        return []
    counts = [max(0, token_count(note.text[s:e])) for s, e in words]
    cores = _pack_cores(sentence_spans(note, words), counts, budget)
    windows: list[Window] = []
    for k, (first, last) in enumerate(cores):
        spare = max(0, max_tokens - sum(counts[first:last]))
        after = min(right, spare // 2) if context_tokens else min(right, spare)
        left, stop = _extend(counts, first, last, min(context_tokens, spare - after), after)
        core_start = 0 if k == 0 else words[first - 1][1]
        core_end = len(note.text) if k == len(cores) - 1 else words[last - 1][1]
        span = words[left:stop]
        windows.append(Window(note.note_id, span[0][0], span[-1][1], core_start, core_end, span))
    return windows


def words_in_core(window: Window) -> list[int]:
    """Indices into `window.words` of the words this window owns (predicts)."""
    return [
        j
        for j, (start, _) in enumerate(window.words)
        if window.core_start <= start < window.core_end
    ]
