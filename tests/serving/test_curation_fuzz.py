"""Fuzzing the curation API's submit path on a real server (tiny package, a real note store):
Hypothesis-made submissions of any text, offsets, unit, kind and id. The oracle allows only the
contract's statuses, wants every refusal to name its field and never quote the note, and checks
that what was stored is what was sent, in code points."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_strategies import note_texts
from serving.api import curation_pb2 as pb
from serving.api import curation_pb2_grpc
from serving.offsets import UNITS, offset_table
from serving.server import NerServer
from tests.serving.servers import config_for, running

ALLOWED = {"OK", "INVALID_ARGUMENT", "ALREADY_EXISTS", "FAILED_PRECONDITION"}
FIELDS = ("note_id", "revision", "text", "annotator", "kind", "offset_unit", "entities")
FIELDS += ("model_version", "the request is not a valid")


def _words(text: str) -> list[tuple[int, int]]:
    """Code-point spans of the text's whitespace-free runs."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


_IDS = itertools.count()
BAD = {
    "note_id": st.sampled_from(("", " ", "a\x07b", "x" * 129, "\u200bzw")),
    "revision": st.sampled_from((0, -1)),
    "annotator": st.sampled_from(("", "c\x00d", "ü" * 130)),
    "kind": st.sampled_from((0, 9)),
    "model_version": st.just("v" * 200),
    "offset_unit": st.sampled_from((7, -1)),
}


@st.composite
def submissions(draw: st.DrawFn) -> pb.SubmitAnnotationRequest:
    """Valid ids, kinds and units with spans mostly on the text's words, in its unit; now and
    then one field out of the contract, or a span anywhere."""
    text = draw(note_texts())
    unit = draw(st.sampled_from((0, 1, 2, 3)))
    table = list(offset_table(text, UNITS[unit]))
    words = _words(text)
    spans = []
    for index in sorted(draw(st.sets(st.integers(0, max(len(words) - 1, 0)), max_size=3))):
        if words and draw(st.integers(0, 9)) < 8:
            begin, end = table[words[index][0]], table[words[index][1]]
        else:
            begin = draw(st.integers(-1, table[-1] + 2))
            end = draw(
                st.one_of(st.integers(begin + 1, begin + 12), st.integers(-1, table[-1] + 2))
            )
        category = draw(st.sampled_from(("Chemical", "Disease", "Chemical", "Disease", "Drug")))
        spans.append(pb.AnnotatedEntity(begin=begin, end=end, category=category))
    fields = {
        "note_id": f"fuzz-{next(_IDS)}",  # fresh: a repeated id would be a retry
        "revision": draw(st.sampled_from((1, 1, 2, 2**62))),
        "annotator": draw(st.sampled_from(("coder-1", "coder-2", "Dr-ü-7"))),
        "kind": draw(st.sampled_from((1, 2, 3))),
        "model_version": draw(st.sampled_from(("", "000003-round-2"))),
        "offset_unit": unit,
    }
    broken = draw(st.sampled_from((None, None, None, None, *BAD)))
    if broken is not None:
        fields[broken] = draw(BAD[broken])
    return pb.SubmitAnnotationRequest(text=text, entities=spans, **fields)


@pytest.fixture(scope="module")
def served(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NerServer, int]]:
    state = tmp_path_factory.mktemp("fuzz-curation")
    cfg = config_for(tiny_package, state_dir=state, note_store=state / "notes.sqlite")
    with running(cfg) as running_server:
        yield running_server


def _expected_spans(request: pb.SubmitAnnotationRequest) -> list[tuple[int, int, str]]:
    table = list(offset_table(request.text, UNITS[request.offset_unit]))
    spans = [(table.index(e.begin), table.index(e.end), e.category) for e in request.entities]
    return sorted(spans)


def _problems(server: NerServer, request: pb.SubmitAnnotationRequest, outcome: object) -> list[str]:
    if isinstance(outcome, grpc.RpcError):
        code, details = outcome.code().name, str(outcome.details())
        found = [] if code in ALLOWED else [f"status {code}: {details}"]
        if code == "INVALID_ARGUMENT" and not details.startswith(FIELDS):
            found.append(f"a refusal that names no field: {details!r}")
        if len(request.text.strip()) >= 12 and request.text in details:
            found.append("a refusal quotes the note")
        return found
    assert isinstance(outcome, pb.SubmitAnnotationResponse) and server.store is not None
    if outcome.outcome != pb.SubmitAnnotationResponse.OUTCOME_STORED or request.kind == 3:
        return []
    stored = {n.note_id: n for n in server.store.snapshot().notes}.get(request.note_id)
    if stored is None:
        return [f"note {request.note_id!r} answered STORED but not in the snapshot"]
    got = sorted((e.start, e.end, e.label) for e in stored.entities)
    if stored.text != request.text or got != _expected_spans(request):
        return [f"note {request.note_id!r} stored other than sent: {got}"]
    return []


def test_generated_submissions(served: tuple[NerServer, int]) -> None:
    server, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = curation_pb2_grpc.CurationServiceStub(channel)

        @settings(
            max_examples=400,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(submissions())
        def judged(request: pb.SubmitAnnotationRequest) -> None:
            try:
                outcome: object = stub.SubmitAnnotation(request, timeout=30)
            except grpc.RpcError as err:
                outcome = err
            problems = _problems(server, request, outcome)
            assert not problems, "\n".join(problems)

        judged()
        # still whole and answering
        ok = pb.SubmitAnnotationRequest(
            note_id="after-fuzz", revision=1, text="Aspirin caused fever.", annotator="c", kind=1
        )
        assert stub.SubmitAnnotation(ok, timeout=30).outcome == 1
