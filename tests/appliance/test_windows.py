"""Windows: cores tile the note, every word has one owner, token budgets hold."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.notes import Note
from appliance.readers import read_conll
from appliance.windows import (
    Window,
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


def count(word: str) -> int:
    """A stand-in for a subword tokenizer: roughly one token per 3 characters."""
    return 1 + len(word) // 3


def random_text(rng: random.Random, sentences: int) -> str:
    parts: list[str] = [rng.choice(["", " ", "\n"])]
    for _ in range(sentences):
        for _ in range(rng.randint(1, 40)):
            parts += [rng.choice(VOCAB), rng.choice(SEPARATORS)]
        parts += [rng.choice([".", "!", "?", "。"]), rng.choice(SEPARATORS)]
    return "".join(parts)


def check_windows(
    note: Note, windows: list[Window], max_tokens: int, counter: Callable[[str], int] = count
) -> None:
    words = word_spans(note)
    assert windows[0].core_start == 0
    assert windows[-1].core_end == len(note.text)
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.core_end == b.core_start
    owned: list[tuple[int, int]] = []
    for w in windows:
        assert w.note_id == note.note_id
        assert w.core_start < w.core_end
        assert (w.start, w.end) == (w.words[0][0], w.words[-1][1])
        assert list(w.words) == [s for s in words if w.start <= s[0] and s[1] <= w.end]
        core = words_in_core(w)
        assert core, "every core owns at least one word"
        assert core == list(range(core[0], core[-1] + 1))
        owned += [w.words[j] for j in core]
        # characters of the core outside the window text are whitespace only
        outside = note.text[w.core_start : max(w.core_start, w.start)]
        outside += note.text[min(w.core_end, w.end) : w.core_end]
        assert not outside.strip()
        size = sum(counter(note.text[s:e]) for s, e in w.words)
        assert size <= max_tokens or len(core) == 1
    assert owned == list(words)


@pytest.mark.parametrize("seed", range(12))
def test_random_notes_tile(seed: int) -> None:
    rng = random.Random(seed)
    note = Note(f"r{seed}", random_text(rng, rng.randint(1, 30)))
    max_tokens, context = rng.choice([(8, 2), (16, 4), (64, 8), (200, 50), (5, 0)])
    windows = make_windows(note, count, max_tokens, context)
    check_windows(note, windows, max_tokens)
    if context and len(windows) > 1:
        assert windows[1].start < windows[1].core_start  # left context is really there


@pytest.mark.parametrize("seed", range(6))
def test_left_context_only_tiles(seed: int) -> None:
    rng = random.Random(100 + seed)
    note = Note(f"l{seed}", random_text(rng, rng.randint(2, 30)))
    max_tokens, context = rng.choice([(8, 2), (16, 4), (64, 8), (200, 50)])
    windows = make_windows(note, count, max_tokens, context, 0)
    check_windows(note, windows, max_tokens)
    for w in windows:  # the window ends with its core: nothing after it is read
        assert words_in_core(w)[-1] == len(w.words) - 1


def test_no_right_context_frees_core_budget() -> None:
    note = Note("l", " ".join(f"w{i}" for i in range(100)) + ".")
    both = make_windows(note, lambda w: 1, 10, 2)
    left = make_windows(note, lambda w: 1, 10, 2, 0)
    assert max(len(words_in_core(w)) for w in both) == 6
    assert max(len(words_in_core(w)) for w in left) == 8
    assert all(len(w.words) <= 10 for w in left)
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
    windows = make_windows(note, lambda w: 1, 8, 0)  # two sentences fit in 8, three do not
    assert [len(words_in_core(w)) for w in windows] == [8, 4]
    assert text[windows[1].core_start : windows[1].core_end] == " Seven eight nine."


def test_blank_line_starts_sentence() -> None:
    note = Note("b", "Diagnosis\n\nFever and cough")
    assert sentence_spans(note, word_spans(note)) == [(0, 1), (1, 4)]


def test_very_long_word_alone() -> None:
    giant = "a" * 300
    note = Note("g", f"short words {giant} and more words here .")
    windows = make_windows(note, count, 12, 2)
    check_windows(note, windows, 12)
    (alone,) = [w for w in windows if note.text[w.core_start : w.core_end].strip() == giant]
    assert [alone.words[j] for j in words_in_core(alone)] == [(12, 312)]
    assert alone.words == ((12, 312),)  # no room left for context


def test_long_sentence_split_at_words() -> None:
    note = Note("l", " ".join(f"w{i}" for i in range(100)) + ".")
    windows = make_windows(note, lambda w: 1, 10, 2)
    check_windows(note, windows, 10, lambda w: 1)
    assert all(len(words_in_core(w)) <= 6 for w in windows)
    assert all(len(w.words) <= 10 for w in windows)


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_no_words_no_windows(text: str) -> None:
    assert make_windows(Note("e", text), count, 16, 4) == []


@pytest.mark.parametrize(
    ("max_tokens", "context", "right"),
    [(8, 4, None), (9, 5, None), (0, 0, None), (10, -1, None), (8, 2, 6), (8, 2, -1)],
)
def test_bad_budget(max_tokens: int, context: int, right: int | None) -> None:
    with pytest.raises(ValueError, match="window budget too small"):
        make_windows(Note("n", "text"), count, max_tokens, context, right)


def test_conll_words_respected(tmp_path: Path) -> None:
    # spaCy would split "t-butyl" and "Na+." differently; the given tokens must win
    path = tmp_path / "pre.tsv"
    rows = ["t-butyl\tB-Chemical", "alcohol\tI-Chemical", "and\tO", "Na+.\tB-Chemical", "x\tO"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    note = read_conll(path).notes[0]
    assert note.words is not None
    assert word_spans(note) == note.words
    assert len(sentence_spans(note, note.words)) == 1
    windows = make_windows(note, lambda w: 1, 3, 1)
    check_windows(note, windows, 3, lambda w: 1)
    assert {s for w in windows for s in w.words} == set(note.words)


def test_conll_devel_sample_tiles() -> None:
    devel = Path(__file__).resolve().parents[2] / "data" / "bc5cdr" / "devel.tsv"
    notes = read_conll(devel).notes[:300]
    for note in notes:
        check_windows(note, make_windows(note, count, 24, 4), 24)


def test_bad_pre_tokenized_words() -> None:
    with pytest.raises(ValueError, match="note o: word spans"):
        word_spans(Note("o", "abc def", words=((0, 3), (2, 5))))
