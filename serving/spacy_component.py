"""spaCy pipeline component `appliance_ner`: sets `doc.ents` from the gRPC endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from spacy.language import Language
from spacy.tokens import Doc, Span

from serving.client import NerClient

log = logging.getLogger(__name__)
MISALIGNED = "appliance_misaligned"  # doc.user_data key: entities not on spaCy token boundaries


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
        doc.ents = spans
        return doc


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
