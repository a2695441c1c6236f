"""Metrics: strict entity-level P/R/F1 (seqeval, IOB2) and character-span F1 on raw text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from appliance.decoding import NotePrediction
from appliance.encoding import word_tags
from appliance.notes import EntitySpan, Note


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


def _scores(report: dict[str, dict[str, float]], key: str) -> Scores:
    row = report.get(key, {})
    return Scores(
        float(row.get("precision", 0.0)),
        float(row.get("recall", 0.0)),
        float(row.get("f1-score", 0.0)),
        int(row.get("support", 0)),
    )


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, Scores]:
    """Strict IOB2 entity-level scores: overall ("micro") and per entity type."""
    report = classification_report(
        [list(s) for s in gold],
        [list(s) for s in predicted],
        mode="strict",
        scheme=IOB2,
        output_dict=True,
        zero_division=0,
    )
    types = [k for k in report if k not in ("micro avg", "macro avg", "weighted avg")]
    result = {"overall": _scores(report, "micro avg")}
    result.update({name: _scores(report, name) for name in sorted(types)})
    return result


def _prf(tp: int, n_pred: int, n_gold: int) -> Scores:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, n_gold)


def span_scores(
    gold: Sequence[Sequence[EntitySpan]], predicted: Sequence[Sequence[EntitySpan]]
) -> dict[str, Scores]:
    """Exact-match (start, end, label) span F1 on raw-text character offsets."""

    def keyed(notes: Sequence[Sequence[EntitySpan]]) -> set[tuple[int, int, int, str]]:
        return {(n, s.start, s.end, s.label) for n, spans in enumerate(notes) for s in spans}

    g, p = keyed(gold), keyed(predicted)
    labels = sorted({k[3] for k in g | p})
    result = {"overall": _prf(len(g & p), len(p), len(g))}
    for label in labels:
        gl = {k for k in g if k[3] == label}
        pl = {k for k in p if k[3] == label}
        result[label] = _prf(len(gl & pl), len(pl), len(gl))
    return result


def evaluate_predictions(
    notes: Sequence[Note], predictions: Sequence[NotePrediction]
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Both metric families for notes with gold entities and their predictions."""
    gold_tags = [word_tags(p.words, n.entities) for n, p in zip(notes, predictions, strict=True)]
    entity = entity_scores(gold_tags, [p.tags for p in predictions])
    span = span_scores([n.entities for n in notes], [p.spans for p in predictions])
    return {
        "entity_strict": {k: v.as_dict() for k, v in entity.items()},
        "span_exact": {k: v.as_dict() for k, v in span.items()},
    }
