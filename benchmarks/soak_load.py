"""The soak's client load: real BC5CDR notes and hostile notes from closed-loop client threads
that retry UNAVAILABLE (and RESOURCE_EXHAUSTED "retry later") with backoff and wait_for_ready,
each answer judged by the serving contract (benchmarks/fuzz_cases.py, fuzz_oracle.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from benchmarks.fuzz_cases import Expect, Limits, hostile_cases, predict
from benchmarks.fuzz_oracle import RETRY_LATER, SERVICE, response_problems
from benchmarks.serving import build_notes
from serving.api import ner_pb2, ner_pb2_grpc
from serving.client import UNITS, request

OK = grpc.StatusCode.OK
# The hostile classes of the fuzz corpus the soak mixes in: long single words, emoji and CJK
# runs, base64 and RTF blobs, control characters, empty text, notes over the character or the
# token limit, invalid UTF-8 (raw bytes past the protobuf client).
HOSTILE = (
    *("word-long", "word-120k", "emoji-mixed", "cjk", "emoji-40k", "base64", "rtf", "control"),
    *("empty", "whitespace", "one-char-words-over", "one-char-words-under", "invalid-utf8"),
)
# Channel settings of a well-behaved EHR client: reconnect quickly after the server restarts.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


@dataclass(frozen=True)
class Item:
    """One note the clients may send: a request (or raw bytes) and the outcomes allowed."""

    key: str
    klass: str  # "clinical" or a hostile class
    expect: Expect
    text: str = ""  # clinical notes: sent with a random offset unit
    request: ner_pb2.AnalyzeRequest | None = None
    raw: bytes | None = None
    tokens: int = 0  # clinical notes: model tokens of the text


@dataclass
class Outcome:
    """What one logical request went through, times relative to the load's start."""

    client: int
    key: str
    klass: str
    unit: str
    started: float
    tokens: int = 0  # clinical notes: model tokens of the text
    ended: float = 0.0
    attempts: list[tuple[str, float, float]] = field(default_factory=list)  # code, start, end
    code: str = ""
    version: str = ""
    spans: tuple[tuple[int, int, str], ...] = ()
    problems: list[str] = field(default_factory=list)

    @property
    def last_attempt_s(self) -> float:
        return self.attempts[-1][2] - self.attempts[-1][1]


def clinical_items(tokenizer: Any, targets: Sequence[int], per_target: int) -> list[Item]:
    """Consecutive BC5CDR test sentences packed into notes of about each target token count."""
    answered = Expect(frozenset({OK}))
    return [
        Item(f"clinical-{target}-{i}", "clinical", answered, text=note.text, tokens=tokens)
        for target in targets
        for i, (note, tokens) in enumerate(build_notes(tokenizer, per_target, target))
    ]


def hostile_items(limits: Limits) -> list[Item]:
    """The fuzz corpus's single-note cases of the HOSTILE classes, with their expected status."""
    items = []
    for i, case in enumerate(hostile_cases(limits)):
        if case.klass not in HOSTILE or case.kind not in ("analyze", "raw"):
            continue
        key = f"{case.klass}-{i}"
        if case.kind == "raw":
            refused = Expect(frozenset({grpc.StatusCode.INVALID_ARGUMENT}))
            items.append(Item(key, case.klass, case.expect or refused, raw=case.raw[0]))
        else:
            req = case.requests[0]
            expect = case.expect or predict(req, limits)
            items.append(Item(key, case.klass, expect, request=req))
    return items


@dataclass(frozen=True)
class LoadSpec:
    target: str
    clinical: list[Item]
    hostile: list[Item]
    hostile_share: float
    limits: Limits
    versions: set[str]  # registry versions an answer may carry (grows as they are published)
    attempt_timeout_s: float = 300.0
    request_budget_s: float = 600.0  # give up retrying after this (a failed request)
    seed: int = 0


class Client:
    """One closed-loop client thread with its own channel."""

    def __init__(self, spec: LoadSpec, number: int, t0: float) -> None:
        self.spec = spec
        self.number = number
        self.t0 = t0
        self.rng = random.Random(spec.seed * 1000 + number)
        self.channel = grpc.insecure_channel(spec.target, options=CHANNEL_OPTIONS)
        self.stub = ner_pb2_grpc.NerServiceStub(self.channel)
        self.raw_analyze = self.channel.unary_unary(f"{SERVICE}/Analyze")
        self.outcomes: list[Outcome] = []

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.outcomes.append(self.send(self.pick()))
        finally:
            self.channel.close()

    def pick(self) -> tuple[Item, ner_pb2.AnalyzeRequest | None, str]:
        spec = self.spec
        if spec.hostile and self.rng.random() < spec.hostile_share:
            klass = self.rng.choice(sorted({h.klass for h in spec.hostile}))
            item = self.rng.choice([h for h in spec.hostile if h.klass == klass])
            return item, item.request, "raw" if item.raw is not None else "as-sent"
        item = self.rng.choice(spec.clinical)
        unit = self.rng.choice(sorted(UNITS))
        return item, request(item.text, note_id=item.key, unit=unit, include_text=True), unit

    def send(self, picked: tuple[Item, ner_pb2.AnalyzeRequest | None, str]) -> Outcome:
        item, req, unit = picked
        out = Outcome(self.number, item.key, item.klass, unit, self.now(), item.tokens)
        while True:
            started = self.now()
            code, details, reply = self.attempt(item, req)
            out.attempts.append((code.name, started, self.now()))
            retryable = code == grpc.StatusCode.UNAVAILABLE or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and RETRY_LATER in details
            )
            if not retryable or self.now() - out.started > self.spec.request_budget_s:
                break
            backoff = min(5.0, 0.1 * 2 ** (len(out.attempts) - 1))
            time.sleep(backoff * self.rng.uniform(0.5, 1.5))
        out.ended, out.code = self.now(), code.name
        self.judge(out, item, req, code, details, reply)
        return out

    def attempt(
        self, item: Item, req: ner_pb2.AnalyzeRequest | None
    ) -> tuple[grpc.StatusCode, str, Any]:
        timeout = self.spec.attempt_timeout_s
        try:
            if item.raw is not None:
                payload = self.raw_analyze(item.raw, timeout=timeout, wait_for_ready=True)
                return OK, "", ner_pb2.AnalyzeResponse.FromString(payload)
            return OK, "", self.stub.Analyze(req, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            if not isinstance(err, grpc.Call):
                return grpc.StatusCode.UNKNOWN, str(err), None
            return err.code(), err.details() or "", None

    def judge(
        self,
        out: Outcome,
        item: Item,
        req: ner_pb2.AnalyzeRequest | None,
        code: grpc.StatusCode,
        details: str,
        reply: Any,
    ) -> None:
        wrong = item.expect.problem(code, details)
        if wrong is not None:
            out.problems.append(wrong)
        if code != OK or reply is None:
            return
        out.version = reply.model_version
        out.spans = tuple((e.begin, e.end, e.category) for e in reply.entities)
        if reply.model_version not in self.spec.versions:
            out.problems.append(f"model_version {reply.model_version!r} was never published")
        if req is not None:
            out.problems += response_problems(req, reply, self.spec.limits)

    def now(self) -> float:
        return time.monotonic() - self.t0


def run_load(
    spec: LoadSpec,
    clients: int,
    seconds: float,
    events: Sequence[tuple[float, Callable[[], None]]] = (),
) -> tuple[float, list[Outcome]]:
    """`clients` threads for `seconds`; each event runs at its offset (s) from the start. Clients
    finish the request they are on after the end (none is abandoned). (t0, outcomes)."""
    t0 = time.monotonic()
    stop = threading.Event()
    workers = [Client(spec, n, t0) for n in range(clients)]
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        for at, action in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            action()
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return t0, [o for w in workers for o in w.outcomes]
