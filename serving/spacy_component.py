"""spaCy pipeline component `appliance_ner`: sets `doc.ents` from the gRPC endpoint, and sends a
clinician's corrected `doc.ents` back to the box's note store (`RemoteNer.submit`)."""

from __future__ import annotations

import logging
from pathlib import Path

from spacy.language import Language
from spacy.tokens import Doc, Span

from serving.client import NerClient

log = logging.getLogger(__name__)
MISALIGNED = "appliance_misaligned"  # doc.user_data key: entities not on spaCy token boundaries
UNPLACED = "appliance_unplaced"  # widened entities that collided with another of another category
MODEL_VERSION = "appliance_model_version"  # doc.user_data key: the version whose entities these are


def _merge_widened(doc: Doc, spans: list[Span]) -> list[Span]:
    """Widened spans can share a token: same category merges, otherwise the first one stays."""
    placed: list[Span] = []
    for span in spans:  # the server returns entities in text order
        last = placed[-1] if placed else None
        if last is None or span.start >= last.end:
            placed.append(span)
        elif span.label_ == last.label_:
            placed[-1] = Span(doc, last.start, max(last.end, span.end), label=last.label_)
        else:
            doc.user_data[UNPLACED].append((span.start_char, span.end_char, span.label_))
    return placed


class RemoteNer:
    """Calls Analyze (code-point offsets = spaCy character offsets) and sets doc.ents.

    An entity whose edges fall inside a spaCy token is widened to whole tokens ("expand") and
    recorded in `doc.user_data["appliance_misaligned"]` as (begin, end, category): never dropped.
    """

    def __init__(
        self, target: str, ca: str | None, cert: str | None, key: str | None, timeout: float
    ) -> None:
        self.client = NerClient(
            target,
            ca=Path(ca) if ca else None,
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
            timeout=timeout,
        )

    def __call__(self, doc: Doc) -> Doc:
        if not doc.text.strip():
            return doc
        response = self.client.analyze(doc.text, unit="code_point")
        spans: list[Span] = []
        misaligned: list[tuple[int, int, str]] = []
        for e in response.entities:
            span = doc.char_span(int(e.begin), int(e.end), label=e.category)
            if span is None:
                misaligned.append((int(e.begin), int(e.end), e.category))
                span = doc.char_span(
                    int(e.begin), int(e.end), label=e.category, alignment_mode="expand"
                )
            if span is None:
                raise ValueError(f"entity {e.id} [{e.begin}, {e.end}) cannot map onto the Doc")
            spans.append(span)
        if misaligned:
            log.warning("%d entities widened to token boundaries", len(misaligned))
        doc.user_data[MISALIGNED] = misaligned
        doc.user_data[UNPLACED] = []
        doc.user_data[MODEL_VERSION] = response.model_version
        doc.ents = _merge_widened(doc, spans)
        return doc

    def submit(
        self, doc: Doc, note_id: str, revision: int, annotator: str, kind: str = "corrected"
    ) -> str:
        """Send `doc.ents` (as a clinician left them) to the box's note store as revision
        `revision` of note `note_id`; returns the outcome: stored, duplicate or stale."""
        response = self.client.submit_annotation(
            note_id,
            revision,
            doc.text,
            [(e.start_char, e.end_char, e.label_) for e in doc.ents],
            annotator,
            kind=kind,
            model_version=str(doc.user_data.get(MODEL_VERSION, "")),
        )
        return str(response.Outcome.Name(response.outcome)).removeprefix("OUTCOME_").lower()


@Language.factory(
    "appliance_ner",
    default_config={
        "target": "127.0.0.1:50051",
        "ca": None,
        "cert": None,
        "key": None,
        "timeout": 30.0,
    },
)
def make_remote_ner(
    nlp: Language,
    name: str,
    target: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    timeout: float,
) -> RemoteNer:
    return RemoteNer(target, ca, cert, key, timeout)
