"""The fuzz oracle: send a hostile case to a live NerService and judge the answer by the contract.

Only OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED may come back (never INTERNAL, UNKNOWN,
UNAVAILABLE or a dropped connection); an OK answer's entities lie inside the text in the
requested unit, in order, without overlap, on character boundaries, and the same note sent alone
reproduces them exactly; afterwards a normal note still answers OK.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.fuzz_cases import (
    OK,
    SENTENCE,
    Case,
    Expect,
    Limits,
    predict,
    predict_batch,
)
from serving.api import ner_pb2, ner_pb2_grpc

SERVICE = "/" + ner_pb2.DESCRIPTOR.services_by_name["NerService"].full_name
ANSWERED_UNIT = {0: 1, 1: 1, 2: 2, 3: 3}  # an UNSPECIFIED unit is answered in CODE_POINT
RETRY_LATER = "retry later"  # queue admission: RESOURCE_EXHAUSTED is always allowed with it


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    reply: Any  # the response message when OK
    seconds: float


@dataclass
class Verdict:
    """One case's outcome: status codes seen (RPC, then `note:` per note), time, what broke."""

    klass: str
    codes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def _timed(call: Callable[[], Any]) -> Answer:
    started = time.perf_counter()
    try:
        reply = call()
        return Answer(OK, "", reply, time.perf_counter() - started)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (err.details() if isinstance(err, grpc.Call) else str(err)) or ""
        return Answer(code, details, None, time.perf_counter() - started)


class Fuzzer:
    """A client of one server: typed and raw-bytes calls, the oracle, the health probe."""

    def __init__(self, target: str, metrics_url: str | None = None, timeout: float = 120) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = ner_pb2_grpc.NerServiceStub(self.channel)
        self.metrics_url = metrics_url
        self.timeout = timeout
        self.limits = Limits.from_info(self.stub.GetInfo(ner_pb2.GetInfoRequest(), timeout=60))
        self.normal = _outcome(self.analyze(ner_pb2.AnalyzeRequest(text=SENTENCE)))

    def close(self) -> None:
        self.channel.close()

    def analyze(self, req: ner_pb2.AnalyzeRequest) -> Answer:
        return _timed(lambda: self.stub.Analyze(req, timeout=self.timeout))

    def batch(self, reqs: Sequence[ner_pb2.AnalyzeRequest]) -> Answer:
        message = ner_pb2.AnalyzeBatchRequest(notes=list(reqs))
        return _timed(lambda: self.stub.AnalyzeBatch(message, timeout=self.timeout))

    def raw(self, method: str, payload: bytes) -> Answer:
        """`payload` as the request's bytes (no client-side serializing or checks)."""
        call = self.channel.unary_unary(f"{SERVICE}/{method}")
        return _timed(lambda: call(payload, timeout=self.timeout))

    def stream(self, payloads: Sequence[Any], cancel_after: int | None) -> tuple[Answer, list[Any]]:
        """AnalyzeStream of requests (or raw bytes); the client cancels after `cancel_after`."""
        raw = bool(payloads) and isinstance(payloads[0], bytes)
        method = self.channel.stream_stream(f"{SERVICE}/AnalyzeStream") if raw else None
        call = (method or self.stub.AnalyzeStream)(iter(payloads), timeout=self.timeout)
        results: list[Any] = []
        answer = _timed(lambda: _drain(call, results, cancel_after))
        if raw:
            results = [ner_pb2.NoteResult.FromString(r) for r in results]
        return answer, results

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from the server's Prometheus exporter (None: not exported)."""
        if self.metrics_url is None:
            return None
        with urllib.request.urlopen(self.metrics_url, timeout=10) as page:
            text = page.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return None


def _drain(call: Any, into: list[Any], cancel_after: int | None) -> None:
    for result in call:
        into.append(result)
        if cancel_after is not None and len(into) >= cancel_after:
            call.cancel()
            return


# ------------------------------------------------------------------------------ the oracle


def _outcome(answer: Answer) -> tuple[Any, ...]:
    """What must not change when a note is sent again, alone (scores may: batches pad)."""
    if answer.code != OK:
        return (answer.code.name, answer.details)
    r = answer.reply
    spans = tuple((e.id, e.begin, e.end, e.category, e.text) for e in r.entities)
    return ("OK", r.note_id, r.offset_unit, r.token_count, r.windows, spans)


def _note_answer(result: ner_pb2.NoteResult) -> Answer:
    if result.code == 0:
        return Answer(OK, "", result.response, 0.0)
    return Answer(_status(result.code), result.message, None, 0.0)


def _status(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def _boundaries(text: str, unit: int) -> dict[int, int]:
    """Offset in `unit` -> code point index, at every character boundary."""
    out, at = {0: 0}, 0
    for i, char in enumerate(text):
        if unit == 2:
            at += 2 if ord(char) > 0xFFFF else 1
        elif unit == 3:
            at += len(char.encode("utf-8"))
        else:
            at += 1
        out[at] = i + 1
    return out


def response_problems(req: ner_pb2.AnalyzeRequest, reply: Any, limits: Limits) -> list[str]:
    """What is wrong with an OK answer to `req` (empty: nothing)."""
    problems = []
    if reply.note_id != req.note_id or reply.offset_unit != ANSWERED_UNIT[req.offset_unit]:
        problems.append(f"echo: note_id/offset_unit {reply.note_id!r}/{reply.offset_unit}")
    if not 0 < reply.token_count <= limits.max_request_tokens or reply.windows < 1:
        problems.append(f"token_count {reply.token_count} in {reply.windows} windows")
    table = _boundaries(req.text, req.offset_unit)
    length, end = max(table), 0
    for rank, e in enumerate(reply.entities, start=1):
        where = f"entity {e.id} [{e.begin}, {e.end}) {e.category}"
        if e.id != f"T{rank}" or not end <= e.begin < e.end <= length:
            problems.append(f"{where}: out of order, empty or outside the text (length {length})")
        elif e.begin not in table or e.end not in table:
            problems.append(f"{where}: not on a character boundary")
        else:
            problems += _span_problems(req, e, req.text[table[e.begin] : table[e.end]], where)
        if e.category not in (req.categories or limits.categories):
            problems.append(f"{where}: category not asked for")
        end = max(end, e.end)
    return problems


def _span_problems(req: ner_pb2.AnalyzeRequest, e: Any, piece: str, where: str) -> list[str]:
    problems = []
    if piece != piece.strip() or not piece:
        problems.append(f"{where}: starts or ends with whitespace")
    if e.text != (piece if req.include_text else ""):
        problems.append(f"{where}: text {e.text!r} is not the slice {piece!r}")
    if not 0.0 <= e.score <= 1.0:
        problems.append(f"{where}: score {e.score}")
    return problems


def _allowed(expect: Expect, answer: Answer) -> str | None:
    if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED and RETRY_LATER in answer.details:
        return None
    return expect.problem(answer.code, answer.details)


def note_problems(
    fz: Fuzzer, req: ner_pb2.AnalyzeRequest, answer: Answer, expect: Expect
) -> list[str]:
    """Judge one note's answer, then send the note alone: it must come back the same."""
    wrong = _allowed(expect, answer)
    if wrong is not None:
        return [wrong]
    if answer.code != OK:
        return []
    problems = response_problems(req, answer.reply, fz.limits)
    alone = fz.analyze(req)
    if alone.code == OK and _outcome(alone) != _outcome(answer):
        problems.append(f"sent alone it answers {_outcome(alone)}, not {_outcome(answer)}")
    return problems


def _note_id(req: ner_pb2.AnalyzeRequest) -> str:
    return f"note {req.note_id!r}" if req.note_id else "note"


def _run_analyze(fz: Fuzzer, case: Case, verdict: Verdict) -> None:
    (req,) = case.requests
    answer = fz.analyze(req)
    verdict.codes.append(answer.code.name)
    verdict.seconds = answer.seconds
    verdict.problems += note_problems(fz, req, answer, case.expect or predict(req, fz.limits))


def _run_notes(
    fz: Fuzzer, reqs: Sequence[ner_pb2.AnalyzeRequest], results: Sequence[Any], verdict: Verdict
) -> None:
    for req, result in zip(reqs, results, strict=False):
        answer = _note_answer(result)
        verdict.codes.append(f"note:{answer.code.name}")
        if result.note_id != req.note_id:
            verdict.problems.append(f"{_note_id(req)}: result carries {result.note_id!r}")
        found = note_problems(fz, req, answer, predict(req, fz.limits))
        verdict.problems += [f"{_note_id(req)}: {p}" for p in found]


def _run_batch(fz: Fuzzer, case: Case, verdict: Verdict) -> None:
    answer = fz.batch(case.requests)
    verdict.codes.append(answer.code.name)
    verdict.seconds = answer.seconds
    wrong = _allowed(case.expect or predict_batch(case.requests, fz.limits), answer)
    if wrong is not None:
        verdict.problems.append(wrong)
    elif answer.code == OK:
        results = answer.reply.results
        if len(results) != len(case.requests):
            verdict.problems.append(f"{len(results)} results for {len(case.requests)} notes")
        _run_notes(fz, case.requests, results, verdict)


def _run_stream(fz: Fuzzer, case: Case, verdict: Verdict) -> None:
    answer, results = fz.stream(case.requests, case.cancel_after)
    verdict.codes.append(answer.code.name)
    verdict.seconds = answer.seconds
    done = case.cancel_after if case.cancel_after is not None else len(case.requests)
    if answer.code != OK or len(results) != done:
        verdict.problems.append(f"stream: {answer.code.name}, {len(results)} of {done} results")
    _run_notes(fz, case.requests, results, verdict)


def _parsed(payload: bytes) -> ner_pb2.AnalyzeRequest | None:
    try:
        return ner_pb2.AnalyzeRequest.FromString(payload)
    except DecodeError:
        return None  # invalid UTF-8 in a string field


def _run_raw(fz: Fuzzer, case: Case, verdict: Verdict) -> None:
    expect = case.expect or Expect(frozenset({grpc.StatusCode.INVALID_ARGUMENT}))
    if case.kind == "raw_stream":
        answer, results = fz.stream(case.raw, None)
    else:
        (payload,) = case.raw
        answer = fz.raw("Analyze" if case.kind == "raw" else "AnalyzeBatch", payload)
        results = []
    verdict.codes.append(answer.code.name)
    verdict.seconds = answer.seconds
    wrong = _allowed(expect, answer)
    if wrong is not None:
        verdict.problems.append(wrong)
    for payload, result in zip(case.raw, results, strict=False):
        req = _parsed(payload)
        answer = _note_answer(result)
        verdict.codes.append(f"note:{answer.code.name}")
        if req is None:
            wrong = expect.problem(answer.code, answer.details) if answer.code != OK else "OK"
            verdict.problems += [f"raw note: {wrong}"] if wrong else []
        else:
            verdict.problems += note_problems(fz, req, answer, predict(req, fz.limits))


RUNNERS = {
    "analyze": _run_analyze,
    "batch": _run_batch,
    "stream": _run_stream,
    "raw": _run_raw,
    "raw_batch": _run_raw,
    "raw_stream": _run_raw,
}


def health_problems(fz: Fuzzer, settle_s: float = 10.0) -> list[str]:
    """A normal note still answers as at the start; admitted tokens drain back to none."""
    problems = []
    normal = _outcome(fz.analyze(ner_pb2.AnalyzeRequest(text=SENTENCE)))
    if normal != fz.normal:
        problems.append(f"afterwards a normal note answers {normal}, not {fz.normal}")
    until = time.monotonic() + settle_s
    queued = fz.metric("appliance_ner_queue_tokens")
    while queued and time.monotonic() < until:
        time.sleep(0.05)
        queued = fz.metric("appliance_ner_queue_tokens")
    if queued:
        problems.append(f"afterwards {queued:.0f} tokens are still admitted (queue_tokens)")
    return problems


def run_case(fz: Fuzzer, case: Case, check_health: bool = True) -> Verdict:
    """Send `case`, judge every answer; then (by default) check that the server is healthy."""
    verdict = Verdict(case.klass)
    RUNNERS[case.kind](fz, case, verdict)
    if check_health:
        verdict.problems += health_problems(fz)
    return verdict
