"""Hypothesis strategies for notes: clinical sentences glued to text of any alphabet, random
offset units and category filters, alone, in batches and in streams."""

from __future__ import annotations

from hypothesis import strategies as st

from benchmarks.fuzz_cases import UNITS, Case, Limits, clinical_fragments
from serving.api import ner_pb2

ODD_PIECES = (
    *("\u200b", "\u202e", "\u200f", "\u0301\u0302", "\ufeff", "\x00", "\r\n", "\x1c", "\x85"),
    *("😀", "👩\u200d⚕️", "🇫🇷", "患者は頭痛", "=====", r"{\rtf1\ansi ", "<br/>", "%20", "Na140K4.1"),
)
SEPARATORS = ("", " ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u3000", "\u2028")


def note_texts() -> st.SearchStrategy[str]:
    """Clinical sentences glued to text of any alphabet (bar surrogates, which protobuf refuses)."""
    piece = st.one_of(
        st.sampled_from(clinical_fragments()),
        st.text(max_size=60),
        st.text(st.characters(categories=("Mn", "Me", "Cf", "Cc", "Zs", "Co", "Cn")), max_size=12),
        st.sampled_from(ODD_PIECES),
    )
    parts = st.lists(st.tuples(piece, st.sampled_from(SEPARATORS)), min_size=1, max_size=5)
    return parts.map(lambda ps: "".join(p + s for p, s in ps))


def category_lists(limits: Limits) -> st.SearchStrategy[list[str]]:
    """Mostly no filter or known categories; one time in six, unknown ones among them."""
    known = st.lists(st.sampled_from(limits.categories), min_size=1, max_size=2)
    unknown = st.sampled_from(("Drug", "", "chemical", "Disease ", "*"))
    mixed = st.lists(st.one_of(st.sampled_from(limits.categories), unknown), min_size=1, max_size=3)
    return st.one_of(st.just([]), st.just([]), st.just([]), known, known, mixed)


def analyze_requests(limits: Limits) -> st.SearchStrategy[ner_pb2.AnalyzeRequest]:
    """One note with a random offset unit (now and then an unknown one) and category filter."""
    return st.builds(
        ner_pb2.AnalyzeRequest,
        note_id=st.text(max_size=12),
        text=note_texts(),
        offset_unit=st.sampled_from((*UNITS, *UNITS, *UNITS, 7, -1)),
        categories=category_lists(limits),
        include_text=st.booleans(),
    )


def batches(limits: Limits, most: int = 5) -> st.SearchStrategy[list[ner_pb2.AnalyzeRequest]]:
    return st.lists(analyze_requests(limits), min_size=1, max_size=most)


def generated_cases(klass: str, kind: str, limits: Limits) -> st.SearchStrategy[Case]:
    """Cases of generated notes: one (analyze), several (batch), or a stream the client may
    cancel after any of its results."""
    if kind == "analyze":
        return analyze_requests(limits).map(lambda r: Case(klass, kind, (r,)))
    if kind == "batch":
        return batches(limits).map(lambda rs: Case(klass, kind, tuple(rs)))
    return batches(limits).flatmap(
        lambda rs: st.one_of(st.none(), st.integers(1, len(rs))).map(
            lambda cancel: Case(klass, "stream", tuple(rs), cancel_after=cancel)
        )
    )
