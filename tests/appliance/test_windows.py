"""Windows: cores tile the note, every word has one owner, token budgets hold."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from appliance.notes import Note
from appliance.readers import read_conll
from appliance.windows import (
    REBUILD_CHARS,
    Window,
    blank_pipeline,
    make_windows,
    right_context,
    sentence_spans,
    word_spans,
    words_in_core,
)

VOCAB = [
    "patient",
    "fiebre",
    "café",
    "naïve",
    "Zürich",
    "🙂",
    "💊🩺",
    "糖尿病",
    "高血压患者",
    "mg/dL",
    "BP:",
    "120/80",
    "q.d.",
    "(",
    ")",
    ",",
    "-",
    "acetaminophen",
    "x" * 40,
    "Übelkeit",
    "e.g.",
]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\t", " \u00a0"]


def toy_tokens(text: str, per: int = 3) -> list[tuple[int, int]]:
    """A stand-in for a byte-level subword tokenizer's offsets over a whole text.

    Longer whitespace runs are one token, a single space leads the token after it, other text
    goes in tokens of up to `per` characters, and a character outside the BMP (an emoji) is two
    tokens sharing its span, as byte-level tokens of one character do.
    """
    spans: list[tuple[int, int]] = []
    for match in re.finditer(r"\s{2,}|\s?\S+|\s", text):
        start, end = match.span()
        if text[start:end].isspace():
            spans.append((start, end))
            continue
        token_start = start
        for k in range(start + (text[start] == " "), end):
            if ord(text[k]) > 0xFFFF:
                if token_start < k and not text[token_start:k].isspace():
                    spans.append((token_start, k))
                    token_start = k
                spans += [(token_start, k + 1), (k, k + 1)]
                token_start = k + 1
            elif k + 1 - token_start >= per or k + 1 == end:
                spans.append((token_start, k + 1))
                token_start = k + 1
    return spans


def random_text(rng: random.Random, sentences: int) -> str:
    parts: list[str] = [rng.choice(["", " ", "\n"])]
    for _ in range(sentences):
        for _ in range(rng.randint(1, 40)):
            parts += [rng.choice(VOCAB), rng.choice(SEPARATORS)]
        parts += [rng.choice([".", "!", "?", "。"]), rng.choice(SEPARATORS)]
    return "".join(parts)


def window_size(window: Window) -> int:
    return window.tokens[1] - window.tokens[0]


def check_windows(note: Note, windows: list[Window], max_tokens: int, per: int = 3) -> None:
    """Cores tile the text, each word (or piece of a long word) has one owner, sizes hold."""
    tokens = toy_tokens(note.text, per)
    assert windows[0].core_start == 0
    assert windows[-1].core_end == len(note.text)
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.core_end == b.core_start
    owned: list[tuple[int, int]] = []
    for w in windows:
        assert w.note_id == note.note_id
        assert w.core_start < w.core_end
        assert (w.start, w.end) == (w.words[0][0], w.words[-1][1])
        core = words_in_core(w)
        assert core, "every core owns at least one word"
        assert core == list(range(core[0], core[-1] + 1))
        owned += [w.words[j] for j in core]
        # characters of the core outside the window text are whitespace only
        outside = note.text[w.core_start : max(w.core_start, w.start)]
        outside += note.text[min(w.core_end, w.end) : w.core_end]
        assert not outside.strip()
        assert 0 < window_size(w) <= max_tokens
        for (_, end), t in zip(w.words, w.word_tokens, strict=True):
            assert w.tokens[0] <= t < w.tokens[1]
            assert tokens[t][0] < end <= tokens[t][1]  # the token holds the word's last character
    # every non-space character is in exactly one owned word: the words tile the spaCy words
    assert [c for s, e in owned for c in range(s, e)] == [
        c for s, e in word_spans(note) for c in range(s, e)
    ]


@pytest.mark.parametrize("seed", range(12))
def test_random_notes_tile(seed: int) -> None:
    rng = random.Random(seed)
    note = Note(f"r{seed}", random_text(rng, rng.randint(1, 30)))
    max_tokens, context = rng.choice([(8, 2), (16, 4), (64, 8), (200, 50), (5, 0)])
    windows = make_windows(note, toy_tokens(note.text), max_tokens, context)
    check_windows(note, windows, max_tokens)
    if context and len(windows) > 1:
        assert windows[1].start < windows[1].core_start  # left context is really there


@pytest.mark.parametrize("seed", range(6))
def test_left_context_only_tiles(seed: int) -> None:
    rng = random.Random(100 + seed)
    note = Note(f"l{seed}", random_text(rng, rng.randint(2, 30)))
    max_tokens, context = rng.choice([(8, 2), (16, 4), (64, 8), (200, 50)])
    windows = make_windows(note, toy_tokens(note.text), max_tokens, context, 0)
    check_windows(note, windows, max_tokens)
    for w in windows:  # the window ends with its core: nothing after it is read
        assert words_in_core(w)[-1] == len(w.words) - 1


def test_no_right_context_frees_core_budget() -> None:
    note = Note("l", " ".join(f"w{i}" for i in range(100)) + ".")
    both = make_windows(note, toy_tokens(note.text, per=10), 10, 2)  # a token per word
    left = make_windows(note, toy_tokens(note.text, per=10), 10, 2, 0)
    assert max(len(words_in_core(w)) for w in both) == 6
    assert max(len(words_in_core(w)) for w in left) == 8
    assert all(window_size(w) <= 10 for w in left)
    assert len(left) < len(both)
    assert words_in_core(left[1]) == list(range(2, 10))  # two words of left context


def test_only_causal_models_skip_right_context() -> None:
    assert right_context("causal", 32) == 0
    assert right_context("bidirectional", 32) == 32
    assert right_context("bidirectional-trained", 32) == 32


def test_words_are_spacy_tokens_without_whitespace() -> None:
    note = Note("n", "  Fiebre 39°C,\n\ncafé 🙂 糖尿病。  ")
    spans = word_spans(note)
    texts = [note.text[s:e] for s, e in spans]
    assert "Fiebre" in texts and "café" in texts and "🙂" in texts
    assert all(t.strip() == t and t for t in texts)


def test_sentences_pack_whole() -> None:
    text = "One two three. Four five six. Seven eight nine."
    note = Note("s", text)
    words = word_spans(note)
    assert sentence_spans(note, words) == [(0, 4), (4, 8), (8, 12)]
    windows = make_windows(note, toy_tokens(note.text, per=5), 8, 0)  # 2 sentences fit, not 3
    assert [len(words_in_core(w)) for w in windows] == [8, 4]
    assert text[windows[1].core_start : windows[1].core_end] == " Seven eight nine."


def test_blank_line_starts_sentence() -> None:
    note = Note("b", "Diagnosis\n\nFever and cough")
    assert sentence_spans(note, word_spans(note)) == [(0, 1), (1, 4)]


def test_very_long_word_cut_between_tokens() -> None:
    giant = "a" * 300  # 100 tokens of the stand-in tokenizer
    note = Note("g", f"short words {giant} and more words here .")
    windows = make_windows(note, toy_tokens(note.text), 12, 2)
    check_windows(note, windows, 12)
    pieces = [w.words[j] for w in windows for j in words_in_core(w) if 12 <= w.words[j][0] < 312]
    assert "".join(note.text[s:e] for s, e in pieces) == giant
    assert max(e - s for s, e in pieces) <= 8 * 3  # core budget 12 - 2 - 2 tokens of 3 chars


def test_emoji_run_cut_at_character_boundaries() -> None:
    run = "🙂" * 50 + "x" + "💊" * 50  # 2 tokens per emoji; 201 tokens without a space
    note = Note("e", f"Pain {run} noted.")
    windows = make_windows(note, toy_tokens(note.text), 9, 2, 0)
    check_windows(note, windows, 9)
    cores = [w.words[j] for w in windows for j in words_in_core(w)]
    assert "".join(note.text[s:e] for s, e in cores) == "Pain" + run + "noted."
    pieces = [(s, e) for s, e in cores if 5 <= s < 5 + len(run)]
    assert len(pieces) > 1
    assert all(e - s <= 3 for s, e in pieces)  # 7 tokens of core: at most 3 emoji (6 tokens)


def test_whitespace_run_larger_than_a_window_is_never_read() -> None:
    note = Note("w", "left" + " " * 50 + "\n" * 50 + "right")
    windows = make_windows(note, toy_tokens(note.text), 4, 1)
    check_windows(note, windows, 4)
    assert all(window_size(w) <= 2 for w in windows)  # each word alone, without the gap


def test_long_sentence_split_at_words() -> None:
    note = Note("l", " ".join(f"w{i}" for i in range(100)) + ".")
    windows = make_windows(note, toy_tokens(note.text), 10, 2)
    check_windows(note, windows, 10)
    assert all(len(words_in_core(w)) <= 6 for w in windows)


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_no_words_no_windows(text: str) -> None:
    assert make_windows(Note("e", text), toy_tokens(text), 16, 4) == []


@pytest.mark.parametrize(
    ("max_tokens", "context", "right"),
    [(8, 4, None), (9, 5, None), (0, 0, None), (10, -1, None), (8, 2, 6), (8, 2, -1)],
)
def test_bad_budget(max_tokens: int, context: int, right: int | None) -> None:
    with pytest.raises(ValueError, match="window budget too small"):
        make_windows(Note("n", "text"), toy_tokens("text"), max_tokens, context, right)


def test_conll_words_respected(tmp_path: Path) -> None:
    # spaCy would split "t-butyl" and "Na+." differently; the given tokens must win
    path = tmp_path / "pre.tsv"
    rows = ["t-butyl\tB-Chemical", "alcohol\tI-Chemical", "and\tO", "Na+.\tB-Chemical", "x\tO"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    note = read_conll(path).notes[0]
    assert note.words is not None
    assert word_spans(note) == note.words
    assert len(sentence_spans(note, note.words)) == 1
    windows = make_windows(note, toy_tokens(note.text, per=10), 3, 1)
    check_windows(note, windows, 3, per=10)
    assert {s for w in windows for s in w.words} == set(note.words)


def test_conll_devel_sample_tiles() -> None:
    devel = Path(__file__).resolve().parents[2] / "data" / "bc5cdr" / "devel.tsv"
    notes = read_conll(devel).notes[:300]
    for note in notes:
        check_windows(note, make_windows(note, toy_tokens(note.text), 24, 4), 24)


def test_bad_pre_tokenized_words() -> None:
    with pytest.raises(ValueError, match="note o: word spans"):
        word_spans(Note("o", "abc def", words=((0, 3), (2, 5))))


def test_unique_words_do_not_grow_the_pipeline_without_bound() -> None:
    # Prepare: notes of ids and blobs spaCy has never seen, 3x the rebuild threshold in all
    rng = random.Random(3)
    size = 100_000

    def unique_note(i: int) -> Note:
        words = [f"{rng.getrandbits(64):016x}" for _ in range(size // 17)]
        return Note(f"u{i}", " ".join(words))

    # Execute
    strings = []
    for i in range(3 * REBUILD_CHARS // size):
        word_spans(unique_note(i))
        strings.append(len(blank_pipeline().vocab.strings))

    # Assert: the vocab is replaced before it holds two thresholds' worth of new words
    assert max(strings) < 2 * REBUILD_CHARS // 17 + 5_000
    assert min(strings[len(strings) // 2 :]) < max(strings)  # it was rebuilt on the way


def test_a_word_without_tokens_is_left_out() -> None:
    # Prepare: a tokenizer that drops the control character, as some byte-level ones do
    note = Note("c", "fever \x04 aspirin")
    tokens = [(0, 5), (5, 6), (7, 8), (8, 15)]  # "fever", " ", " ", "aspirin": none for \x04

    # Execute
    windows = make_windows(note, tokens, 8, 1)

    # Assert
    words = [w.words[j] for w in windows for j in words_in_core(w)]
    assert words == [(0, 5), (8, 15)]
