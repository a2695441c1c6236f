"""Encoding with a real tokenizer: no window exceeds max_tokens, whatever the note holds."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from appliance.encoding import encode_notes, special_frame
from appliance.model import embedded_source, load_tokenizer
from appliance.notes import EntitySpan, Note
from appliance.windows import word_spans

rng = random.Random(7)
HOSTILE = {
    "long word": "Given " + "a" * 3000 + " daily.",
    "emoji run": "Pain " + "😀💊" * 700 + " noted.",
    "cjk": "患者は頭痛を訴えた" * 120,
    "base64": base64.b64encode(rng.randbytes(3000)).decode(),
    "rtf": r"{\rtf1\ansi{\fonttbl\f0\fswiss Helvetica;}\f0\pard aspirin\par}" * 40,
    "controls": "".join(chr(i) for i in range(32)) * 40 + " aspirin",
    "zero width": "a\u200bb\u200e\u202ec\u0301\u0301 " * 200,
    "glued table": "|".join(f"Na{i}:140mg/dL" for i in range(400)),
    "whitespace": "fever" + " " * 3000 + "\n" * 500 + "cough",
    "separator": "=" * 4000 + "\nHepatitis after aspirin.",
}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_llama), local_files_only=True)


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize(("max_tokens", "context", "right"), [(64, 8, 0), (40, 6, 6)])
def test_no_window_exceeds_max_tokens(
    tokenizer: PreTrainedTokenizerBase, name: str, max_tokens: int, context: int, right: int
) -> None:
    # Prepare
    text = HOSTILE[name]
    note = Note(name, text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix, suffix = special_frame(tokenizer)

    # Execute
    windows = encode_notes(tokenizer, [note], None, max_tokens, context, right)

    # Assert
    assert max(len(w) for w in windows) <= max_tokens
    owned = [w.window.words[j] for w in windows for j in w.core_words]
    assert "".join(text[s:e] for s, e in owned) == "".join(text.split())  # nothing lost
    for w in windows:
        first, last = w.window.tokens
        assert list(w.input_ids) == prefix + ids[first:last] + suffix


def test_split_word_keeps_entity_offsets(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Rash after " + "x" * 500 + " and aspirin."
    start = text.index("aspirin")
    note = Note("e", text, (EntitySpan(11, 511, "Chemical"), EntitySpan(start, start + 7, "X")))
    tags = ("O", "B-Chemical", "I-Chemical", "B-X", "I-X")
    windows = encode_notes(tokenizer, [note], tags, 32, 4, 0)
    labelled = [
        (w.window.words[j], tags[w.labels[w.word_token[j]]]) for w in windows for j in w.core_words
    ]
    pieces = [(span, tag) for span, tag in labelled if 11 <= span[0] < 511]
    assert len(pieces) > 1
    assert pieces[0][1] == "B-Chemical" and all(t == "I-Chemical" for _, t in pieces[1:])
    assert (pieces[0][0][0], pieces[-1][0][1]) == (11, 511)
    assert ((start, start + 7), "B-X") in labelled


def test_a_long_run_is_one_word_for_spacy() -> None:
    text = "a" + "😀" * 300 + " b " + ")" * 10
    assert word_spans(Note("r", text))[:2] == ((0, 301), (302, 303))


def test_characters_the_embedded_tokenizer_drops_are_no_words() -> None:
    # Prepare: SmolLM2's tokenizer gives \x04 and \x13 no token at all
    tokenizer = load_tokenizer(embedded_source())
    text = "fever \x04 after aspirin \x13"
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    covered = {c for s, e in offsets for c in range(s, e)}
    assert text.index("\x04") not in covered and text.index("\x13") not in covered

    # Execute
    windows = encode_notes(tokenizer, [Note("c", text)], None, 32, 4)

    # Assert
    words = [text[s:e] for w in windows for s, e in (w.window.words[j] for j in w.core_words)]
    assert words == ["fever", "after", "aspirin"]
