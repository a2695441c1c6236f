"""BIO-constrained decoding, span building and both metric families."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.decoding import spans_from_tags, viterbi
from appliance.encoding import word_tags
from appliance.evaluation import entity_scores, span_scores
from appliance.notes import EntitySpan

TAGS = ("O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease")


def test_viterbi_never_emits_an_orphan_inside_tag():
    # Greedy argmax would give O, I-Chemical, I-Chemical: an invalid strict-IOB2 sequence.
    probs = np.array(
        [[0.9, 0.05, 0.02, 0.02, 0.01], [0.30, 0.25, 0.40, 0.03, 0.02], [0.1, 0.1, 0.7, 0.05, 0.05]]
    )
    path = [TAGS[i] for i in viterbi(np.log(probs), TAGS)]
    assert path == ["O", "B-Chemical", "I-Chemical"]


def test_viterbi_agrees_with_argmax_when_argmax_is_valid():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5))
    logits[:, 2] = logits[:, 4] = -50  # no I- tags wanted anywhere
    path = viterbi(logits, TAGS)
    assert path == list(logits.argmax(axis=1))


def test_spans_from_tags_uses_word_offsets_and_mean_score():
    words = [(0, 9), (10, 17), (18, 32), (33, 35)]
    spans = spans_from_tags(
        words, ["B-Chemical", "O", "B-Disease", "I-Disease"], [0.9, 0.99, 0.6, 0.8]
    )
    assert spans[0] == EntitySpan(0, 9, "Chemical", pytest.approx(0.9))
    assert (spans[1].start, spans[1].end, spans[1].label) == (18, 35, "Disease")
    assert spans[1].score == pytest.approx(0.7)


def test_word_tags_from_character_spans():
    words = [(0, 9), (10, 17), (18, 24), (25, 32)]
    tags = word_tags(words, [EntitySpan(10, 24, "Disease"), EntitySpan(25, 32, "Chemical")])
    assert tags == ["O", "B-Disease", "I-Disease", "B-Chemical"]


def test_entity_scores_are_strict_per_type_and_overall():
    gold = [["B-Chemical", "I-Chemical", "O", "B-Disease"]]
    pred = [["B-Chemical", "O", "O", "B-Disease"]]  # chemical boundary wrong -> not a match
    scores = entity_scores(gold, pred)
    assert scores["Chemical"].f1 == 0.0
    assert scores["Disease"].f1 == 1.0
    assert scores["overall"].precision == pytest.approx(0.5)
    assert scores["overall"].recall == pytest.approx(0.5)


def test_span_scores_require_exact_offsets_and_label():
    gold = [[EntitySpan(0, 9, "Chemical"), EntitySpan(18, 35, "Disease")], []]
    pred = [
        [EntitySpan(0, 9, "Chemical"), EntitySpan(18, 32, "Disease")],
        [EntitySpan(1, 2, "Chemical")],
    ]
    scores = span_scores(gold, pred)
    assert scores["overall"].precision == pytest.approx(1 / 3)
    assert scores["overall"].recall == pytest.approx(1 / 2)
    assert scores["Disease"].f1 == 0.0
    assert scores["Chemical"].recall == 1.0
