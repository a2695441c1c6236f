"""The sentence task: its labelling rule, one labelled window per sentence, its head and scores."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import pytest
import torch

from appliance.config import ModelConfig, TrainConfig
from appliance.encoding import IGNORE
from appliance.layers import LayerSelection
from appliance.model import load_model
from appliance.notes import EntitySpan, Note
from appliance.sentence_task import (
    SENTENCE_LABELS,
    as_sentence_classifier,
    encode_sentences,
    predict_sentences,
    sentence_label,
    sentence_scores,
)
from appliance.training import Trainer, seed_everything

CHEMICALS = ["aspirin", "cisplatin", "lithium", "heparin"]
DISEASES = ["fever", "nephrotoxicity", "seizures", "anemia"]


def note_from(words: list[tuple[str, str | None]], note_id: str = "n") -> Note:
    """A note from (word, entity label or None) pairs, joined by single spaces."""
    text, entities = "", []
    for word, label in words:
        start = len(text) + (1 if text else 0)
        text = f"{text} {word}" if text else word
        if label:
            entities.append(EntitySpan(start, start + len(word), label))
    return Note(note_id, text, tuple(entities))


def cue_corpus(count: int, seed: int) -> list[Note]:
    """Sentences of four kinds, a quarter each: cause (positive), co-mention without a cue,
    a cue without a chemical, and a chemical alone (all three negative)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        chem, disease = (rng.choice(CHEMICALS), "Chemical"), (rng.choice(DISEASES), "Disease")
        kind = i % 4
        words: list[tuple[str, str | None]] = [
            [chem, ("caused", None), disease],
            [chem, ("and", None), disease],
            [("stress", None), ("caused", None), disease],
            [chem, ("was", None), ("given", None)],
        ][kind]
        out.append(note_from([("the", None), *words, (".", None)], f"s{i}"))
    return out


def test_the_rule_needs_a_chemical_a_disease_and_a_causal_cue():
    yes = note_from([("cisplatin", "Chemical"), ("induced", None), ("nephrotoxicity", "Disease")])
    assert sentence_label(yes) == 1
    assert (
        sentence_label(note_from([("cisplatin", "Chemical"), ("and", None), ("fever", "Disease")]))
        == 0
    )
    assert (
        sentence_label(note_from([("stress", None), ("caused", None), ("fever", "Disease")])) == 0
    )
    assert sentence_label(Note("empty", "", ())) == 0


def test_one_labelled_window_per_sentence_at_its_last_word(tiny_llama: Path, tmp_path: Path):
    loaded = as_sentence_classifier(
        load_model(ModelConfig(base=str(tiny_llama)), ("Chemical", "Disease"), tmp_path)
    )
    notes = cue_corpus(8, seed=0)
    long_note = note_from(
        [("aspirin", "Chemical"), ("caused", None), ("fever", "Disease")] + [("word", None)] * 120
    )
    windows = encode_sentences(loaded, [*notes, long_note], max_tokens=64, context_tokens=8)
    assert [w.note_index for w in windows] == list(range(9))
    for window, note in zip(windows, [*notes, long_note], strict=True):
        labelled = [(t, y) for t, y in enumerate(window.labels) if y != -100]
        assert labelled == [(window.word_token[window.core_words[-1]], sentence_label(note))]
    assert windows[-1].window.end == len(long_note.text)  # the long note's last window


def test_the_classifier_has_a_two_way_head(tiny_llama: Path, tmp_path: Path):
    loaded = as_sentence_classifier(
        load_model(ModelConfig(base=str(tiny_llama)), ("Chemical", "Disease"), tmp_path)
    )
    assert loaded.labels == SENTENCE_LABELS
    assert loaded.model.score.out_features == 2
    probs = predict_sentences(loaded, cue_corpus(6, seed=1), 64, 8)
    assert probs.shape == (6,) and ((probs > 0) & (probs < 1)).all()


def test_scores_are_those_of_the_positive_class():
    scores = sentence_scores([1, 1, 0, 0, 0], [1, 0, 1, 0, 0])
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(0.6)
    assert sentence_scores([0, 0], [0, 0])["f1"] == 0.0


def test_the_trainer_fits_the_sentence_task_through_its_encoder(tiny_llama: Path, tmp_path: Path):
    # Prepare
    loaded = as_sentence_classifier(
        load_model(ModelConfig(base=str(tiny_llama)), ("Chemical", "Disease"), tmp_path)
    )
    notes = cue_corpus(16, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=8, max_tokens=64, context_tokens=8, use_cache=False)
    encoder = partial(encode_sentences, loaded, max_tokens=64, context_tokens=8)
    selection = LayerSelection.parse("head", loaded.num_layers)

    # Execute
    trainer = Trainer(loaded, selection, cfg, progress=False, encoder=encoder)
    windows = trainer.encode(notes)
    result = trainer.fit(notes, [])

    # Assert: one labelled window per sentence, the sentence label on it, and it trained
    assert windows == encoder(notes)
    assert [[x for x in w.labels if x != IGNORE] for w in windows] == [
        [sentence_label(n)] for n in notes
    ]
    assert len(result.history) == 1 and result.history[0].tokens == sum(map(len, windows))


def test_init_head_is_the_seeded_start_fit_makes(tiny_llama: Path, tmp_path: Path):
    # Prepare
    loaded = load_model(ModelConfig(base=str(tiny_llama)), ("Chemical",), tmp_path)
    trainer = Trainer(loaded, LayerSelection.parse("head", loaded.num_layers), TrainConfig())

    # Execute
    trainer.init_head(seed_everything(5))
    first = loaded.model.score.weight.detach().clone()
    torch.nn.init.zeros_(loaded.model.score.weight)
    trainer.init_head(seed_everything(5))
    other = loaded.model.score.weight.detach().clone()
    trainer.init_head(seed_everything(6))

    # Assert
    torch.testing.assert_close(first, other)
    assert first.abs().sum() > 0
    assert not torch.allclose(first, loaded.model.score.weight)
