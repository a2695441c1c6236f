"""Cut a note into overlapping windows that fit a model's context.

Each window has a *core* (the characters, hence the words, it predicts) and up to
``context_tokens`` tokens' worth of neighbouring words before it and ``right_tokens`` after it
that it only reads. The cores of a note's windows tile its text: every character and every word
belongs to exactly one core. A causal model never reads what follows a word, so its windows carry
no right context (`right_context`); that context would cost compute and change nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import spacy
from spacy.language import Language
from spacy.tokens import Doc

from appliance.notes import Note, WordSpan

_MAX_TEXT_CHARS = 100_000_000  # spaCy's default 1M-char guard is for memory-hungry pipelines
# spaCy strips a run's prefixes and suffixes one at a time, each a search over the rest of the run:
# quadratic in its length (40,000 emoji without a space took 133 s). A longer run without
# whitespace (a base64 blob, an emoji or separator line, a URL) is one word; `split_long_words`
# later cuts it between tokens.
_MAX_SPACY_RUN = 256
_LONG_RUN = re.compile(rf"\S{{{_MAX_SPACY_RUN + 1},}}")


@dataclass(frozen=True)
class Window:
    """A slice of a note for one model pass.

    ``[start, end)`` is the window text (first to last word, context included).
    ``[core_start, core_end)`` is the character range this window owns; the core ranges of a note's
    windows tile ``[0, len(text))``. A core range may reach past the window text only over
    whitespace (leading/trailing whitespace of the note, or the gap before the core).
    ``words`` are the absolute spans of the words inside ``[start, end)``; a word is in the core
    when its start lies in ``[core_start, core_end)``. The model reads the note's tokens
    ``tokens[0]..tokens[1]-1``; ``word_tokens[j]`` (an index into the note's tokens) predicts
    word j: under causal attention it has seen the whole word.
    """

    note_id: str
    start: int
    end: int
    core_start: int
    core_end: int
    words: tuple[WordSpan, ...]
    tokens: tuple[int, int]  # [first, last) indices into the note's tokens
    word_tokens: tuple[int, ...]  # per word, the note token holding its last character


# spaCy keeps every new string it meets in its vocab and its tokenizer cache, forever: a server
# reading base64 blobs and ids grew ~3 MB per 120,000 characters of such notes. The pipeline is
# rebuilt (about 0.2 s) after this many characters, which bounds that growth.
REBUILD_CHARS = 1_000_000


@dataclass
class _Pipeline:
    nlp: Language | None = None
    chars: int = 0  # characters read since it was built


_PIPELINE = _Pipeline()
_PIPELINE_LOCK = threading.Lock()


def blank_pipeline(chars: int = 0) -> Language:
    """The blank-English pipeline with a sentencizer, about to read `chars` more characters.

    A new one replaces it once it has read `REBUILD_CHARS` characters.
    """
    with _PIPELINE_LOCK:
        if _PIPELINE.nlp is None or _PIPELINE.chars > REBUILD_CHARS:
            nlp = spacy.blank("en")
            nlp.max_length = _MAX_TEXT_CHARS
            nlp.add_pipe("sentencizer")
            _PIPELINE.nlp, _PIPELINE.chars = nlp, 0
        _PIPELINE.chars += chars
        return _PIPELINE.nlp


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
    text = _LONG_RUN.sub(lambda m: "x" * len(m.group()), note.text)  # same offsets, linear spaCy
    spans: list[WordSpan] = []
    for token in blank_pipeline(len(text)).make_doc(text):
        if token.is_space:
            continue
        start, end = token.idx, token.idx + len(token.text)
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
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
    nlp = blank_pipeline(len(text))
    doc = Doc(nlp.vocab, words=[text[s:e] for s, e in words], spaces=[bool(g) for g in gaps])
    for i, gap in enumerate(gaps[:-1], start=1):
        if gap.count("\n") >= 2:
            doc[i].is_sent_start = True
    doc = nlp.get_pipe("sentencizer")(doc)
    return [(sent.start, sent.end) for sent in doc.sents]


def token_ranges(
    words: Sequence[WordSpan], token_spans: Sequence[WordSpan]
) -> tuple[list[int], list[int]]:
    """Per word, the index of the first and of the last token that overlaps it.

    `token_spans` are the character spans of the note's tokens in order (a tokenizer's offsets;
    several byte-level tokens may share one character). A word no token covers (a tokenizer may
    drop some control characters) gets ``first > last``. Raises ValueError when the offsets go
    backwards.
    """
    starts = np.fromiter((s for s, _ in token_spans), dtype=np.int64, count=len(token_spans))
    ends = np.fromiter((e for _, e in token_spans), dtype=np.int64, count=len(token_spans))
    if len(token_spans) > 1 and (np.any(np.diff(starts) < 0) or np.any(np.diff(ends) < 0)):
        raise ValueError("tokenizer offsets go backwards; cannot tie words to tokens")
    word_starts = np.fromiter((s for s, _ in words), dtype=np.int64, count=len(words))
    word_ends = np.fromiter((e for _, e in words), dtype=np.int64, count=len(words))
    first = np.searchsorted(ends, word_starts, side="right")  # first token ending past the start
    last = np.searchsorted(starts, word_ends, side="left") - 1  # last token starting before end
    return first.tolist(), last.tolist()


def split_long_words(
    words: Sequence[WordSpan], token_spans: Sequence[WordSpan], budget: int
) -> list[WordSpan]:
    """`words`, with every word of more than `budget` tokens cut into pieces of at most `budget`.

    Cuts fall between tokens at character boundaries (never inside a character that several
    byte-level tokens share), so a piece's characters are exactly its tokens' characters. A word
    that no token covers is left out: the model cannot read or label it.
    """
    first, last = token_ranges(words, token_spans)
    out: list[WordSpan] = []
    for (start, end), a, b in zip(words, first, last, strict=True):
        if b < a:
            continue  # no token: the model never reads it, like whitespace
        if b - a + 1 <= budget:
            out.append((start, end))
            continue
        piece = start
        while b - a + 1 > budget:
            cut = _clean_cut(token_spans, a, budget, piece)
            out.append((piece, token_spans[cut][0]))
            piece, a = token_spans[cut][0], cut
        out.append((piece, end))
    return out


def _clean_cut(token_spans: Sequence[WordSpan], a: int, budget: int, piece: int) -> int:
    """The last token in ``(a, a + budget]`` that starts a new character after `piece`."""
    for t in range(a + budget, a, -1):
        if token_spans[t][0] >= token_spans[t - 1][1] and token_spans[t][0] > piece:
            return t
    for t in range(a + budget + 1, len(token_spans)):  # one character of > budget tokens
        if token_spans[t][0] >= token_spans[t - 1][1] and token_spans[t][0] > piece:
            return t
    raise ValueError(f"cannot cut the word at character {piece} between tokens")


@dataclass(frozen=True)
class _Tokens:
    """Word -> token index tables: word j's tokens are ``first[j]..last[j]`` (inclusive)."""

    first: list[int]
    last: list[int]

    def cost(self, a: int, b: int) -> int:
        """Tokens of a window over words ``[a, b)`` (the gaps between them included)."""
        return self.last[b - 1] - self.first[a] + 1


def _pack_cores(
    sentences: Sequence[tuple[int, int]], tokens: _Tokens, budget: int
) -> list[tuple[int, int]]:
    """Greedy packing of whole sentences (split at words when too long) into word ranges."""
    cores: list[tuple[int, int]] = []
    first = 0  # the current core starts at word `first`
    for s_start, s_end in sentences:
        if tokens.cost(first, s_end) <= budget:
            continue
        if s_start > first:
            cores.append((first, s_start))
            first = s_start
        if tokens.cost(first, s_end) <= budget:
            continue
        for j in range(s_start + 1, s_end):  # an over-long sentence: split between words
            if tokens.cost(first, j + 1) > budget:
                cores.append((first, j))
                first = j
    if first < len(tokens.first):
        cores.append((first, len(tokens.first)))
    return cores


def _extend(tokens: _Tokens, first: int, last: int, before: int, after: int) -> tuple[int, int]:
    """Widen word range ``[first, last)`` by whole words, up to `before`/`after` tokens."""
    left = first
    while left > 0 and tokens.first[first] - tokens.first[left - 1] <= before:
        left -= 1
    right = last
    while right < len(tokens.last) and tokens.last[right] - tokens.last[last - 1] <= after:
        right += 1
    return left, right


def right_context(attention: str, context_tokens: int) -> int:
    """The context after a core that a model with `attention` reads: none when fully causal."""
    return 0 if attention == "causal" else context_tokens


def make_windows(
    note: Note,
    token_spans: Sequence[WordSpan],
    max_tokens: int,
    context_tokens: int,
    right_tokens: int | None = None,
) -> list[Window]:
    """Windows over `note` of at most `max_tokens` of the note's tokens each.

    `token_spans` are the character spans of the note's tokens (the tokenizer's offsets over the
    whole text). Cores hold at most ``max_tokens - context_tokens - right_tokens`` tokens; a word
    longer than that is cut into pieces between tokens, and the pieces are the windows' words.
    Up to `context_tokens` tokens of whole words come before a core and `right_tokens` (default:
    `context_tokens`) after it, so no window ever exceeds `max_tokens`.
    """
    right = context_tokens if right_tokens is None else right_tokens
    budget = max_tokens - context_tokens - right
    if min(context_tokens, right) < 0 or budget < 1:
        raise ValueError(
            f"window budget too small: max_tokens ({max_tokens}) - context_tokens "
            f"({context_tokens}) - right context ({right}) must be >= 1, contexts >= 0"
        )
    words = split_long_words(word_spans(note), token_spans, budget)
    if not words:
        return []
    tokens = _Tokens(*token_ranges(words, token_spans))
    cores = _pack_cores(sentence_spans(note, words), tokens, budget)
    windows: list[Window] = []
    for k, (first, last) in enumerate(cores):
        spare = max_tokens - tokens.cost(first, last)
        after = min(right, spare // 2) if context_tokens else min(right, spare)
        left, stop = _extend(tokens, first, last, min(context_tokens, spare - after), after)
        core_start = 0 if k == 0 else words[first - 1][1]
        core_end = len(note.text) if k == len(cores) - 1 else words[last - 1][1]
        windows.append(
            Window(
                note.note_id,
                words[left][0],
                words[stop - 1][1],
                core_start,
                core_end,
                tuple(words[left:stop]),
                (tokens.first[left], tokens.last[stop - 1] + 1),
                tuple(tokens.last[left:stop]),
            )
        )
    return windows


def words_in_core(window: Window) -> list[int]:
    """Indices into `window.words` of the words this window owns (predicts)."""
    return [
        j
        for j, (start, _) in enumerate(window.words)
        if window.core_start <= start < window.core_end
    ]
