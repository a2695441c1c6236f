"""Hostile NER requests: what the serving contract predicts for any request and a corpus of
hostile note classes (shared by tests/serving/test_fuzz.py and benchmarks/fuzz.py)."""

from __future__ import annotations

import base64
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc

from serving.api import ner_pb2

ROOT = Path(__file__).resolve().parent.parent
OK, INVALID, EXHAUSTED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
UNITS = (0, 1, 2, 3)  # UNSPECIFIED (code points), CODE_POINT, UTF16, UTF8
# A byte-level tokenizer gives at most one token per UTF-8 byte; windows add context and special
# tokens on top. A note within an eighth of the token limit in bytes certainly fits.
CERTAIN_FIT = 8
SENTENCE = "The patient developed hepatotoxicity after taking acetaminophen 500 mg daily."


@dataclass(frozen=True)
class Limits:
    """What the server under test refuses, as its GetInfo reports it."""

    max_note_chars: int
    max_batch_notes: int
    max_request_tokens: int
    categories: tuple[str, ...]

    @classmethod
    def from_info(cls, info: ner_pb2.InfoResponse) -> Limits:
        return cls(
            info.limits.max_note_chars,
            info.limits.max_batch_notes,
            info.limits.max_request_tokens,
            tuple(info.categories),
        )

    def certainly_fits(self, text: str) -> bool:
        return len(text.encode("utf-8")) * CERTAIN_FIT <= self.max_request_tokens


@dataclass(frozen=True)
class Expect:
    """The status codes allowed; a refusal's details must match one of `messages` (regexes)."""

    codes: frozenset[grpc.StatusCode]
    messages: tuple[str, ...] = ()

    def problem(self, code: grpc.StatusCode, details: str) -> str | None:
        """None when (code, details) is allowed, else what is wrong."""
        if code not in self.codes:
            return f"status {code.name} ({details!r}); expected one of {_names(self.codes)}"
        if code != OK and self.messages and not any(re.search(m, details) for m in self.messages):
            return f"{code.name} message {details!r} names none of {list(self.messages)}"
        return None


def _names(codes: frozenset[grpc.StatusCode]) -> list[str]:
    return sorted(c.name for c in codes)


def _numbers(*numbers: int) -> str:
    """A regex: every number appears in the message as a whole number."""
    return "".join(rf"(?=.*(?<!\d){n}(?!\d))" for n in numbers)


def predict(req: ner_pb2.AnalyzeRequest, limits: Limits) -> Expect:
    """The outcome the serving contract gives one note sent alone."""
    refusals: list[str] = []
    if req.offset_unit not in UNITS:
        refusals.append("offset_unit")
    if not req.text.strip():
        refusals.append("empty")
    if len(req.text) > limits.max_note_chars:
        refusals.append(_numbers(len(req.text), limits.max_note_chars) + ".*max_note_chars")
    if set(req.categories) - set(limits.categories):
        refusals.append("categor")
    fits = limits.certainly_fits(req.text)
    tokens = () if fits else (_numbers(limits.max_request_tokens) + ".*max_request_tokens",)
    if refusals:
        return Expect(frozenset({INVALID}), (*refusals, *tokens))
    if maybe_unreadable(req.text):  # the tokenizer may give it no word at all
        return Expect(frozenset({OK, INVALID}), ("no word the model can read", *tokens))
    return Expect(frozenset({OK} if fits else {OK, INVALID}), tokens)


def maybe_unreadable(text: str) -> bool:
    """Only whitespace, control and format characters: a note the model may have no word of
    (SmolLM2's tokenizer drops some control characters), refused as INVALID_ARGUMENT."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def predict_batch(reqs: Sequence[ner_pb2.AnalyzeRequest], limits: Limits) -> Expect:
    """The RPC-level outcome of AnalyzeBatch (each note then gets its own `predict`)."""
    if len(reqs) > limits.max_batch_notes:
        return Expect(
            frozenset({INVALID}),
            (_numbers(len(reqs), limits.max_batch_notes) + ".*max_batch_notes",),
        )
    valid = [r.text for r in reqs if OK in predict(r, limits).codes]
    if limits.certainly_fits("".join(valid)):
        return Expect(frozenset({OK}))
    return Expect(frozenset({OK, EXHAUSTED}), (_numbers(limits.max_request_tokens),))


@lru_cache(maxsize=1)
def clinical_fragments() -> tuple[str, ...]:
    """Sentences of the BC5CDR test split: realistic clinical text with entities."""
    from appliance.readers import read_conll

    notes = read_conll(ROOT / "data" / "bc5cdr" / "test.tsv").notes
    return tuple(n.text for n in notes[:600])


# ------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Case:
    """One hostile request. `kind` says how it travels:

    analyze: `requests[0]` through Analyze; batch: `requests` through AnalyzeBatch;
    stream: `requests` through AnalyzeStream, the client cancelling after `cancel_after` results;
    raw / raw_batch / raw_stream: `raw` payloads (serialized by hand) through that RPC.
    """

    klass: str
    kind: str
    requests: tuple[ner_pb2.AnalyzeRequest, ...] = ()
    raw: tuple[bytes, ...] = ()
    expect: Expect | None = None  # None: `predict` / `predict_batch` decide
    cancel_after: int | None = None


def _req(
    text: str,
    unit: Any = 0,  # an int: unknown values too (an open enum keeps them)
    categories: Sequence[str] = (),
    note_id: str = "",
) -> ner_pb2.AnalyzeRequest:
    return ner_pb2.AnalyzeRequest(
        note_id=note_id, text=text, offset_unit=unit, categories=list(categories), include_text=True
    )


def _every_unit(klass: str, texts: Sequence[str], expect: Expect | None = None) -> list[Case]:
    return [
        Case(klass, "analyze", (_req(t, u, note_id=f"{klass}-{u}"),), expect=expect)
        for t in texts
        for u in UNITS
    ]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/enum values travel as ten-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint (int) or length-delimited bytes."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def raw_request(text: bytes, unit: int = 0, note_id: bytes = b"", category: bytes = b"") -> bytes:
    """An AnalyzeRequest serialized by hand, so its strings may be invalid UTF-8."""
    out = raw_field(1, note_id) + raw_field(2, text) + raw_field(3, unit)
    return out + (raw_field(4, category) if category else b"")


BAD_UTF8 = (
    "lone surrogate \ud800 in a note".encode("utf-8", "surrogatepass"),
    b"aspirin \xff\xfe fever",  # bytes no UTF-8 sequence starts with
    b"cisplatin \xe6\x82",  # a truncated three-byte sequence at the end
    b"over-long \xc0\xaf slash",
)


def _words(count: int) -> str:
    """`count` one-character words: 2 * count - 1 characters."""
    return " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(count))


def _word(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(length))


def _emoji(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x1F300, 0x1F650)) for _ in range(count))


def _text_cases() -> list[Case]:
    """Odd text within the limits: every one answers OK, in every offset unit."""
    fragments = clinical_fragments()
    blob = base64.b64encode(random.Random(3).randbytes(4500)).decode()
    rtf = (
        r"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}\f0\fs24 Patient given "
        r"{\b aspirin}\par developed {\i fever} after cisplatin\par}"
    )
    lab = "Na140K4.1Cl101HCO324BUN18Cr1.1Glu105WBC11.2Hgb9.8Plt150INR1.3" * 20
    url = "https://ehr.example.org/patient/123/notes?" + "&".join(
        f"q{i}=aspirin%20{i}" for i in range(300)
    )
    texts = {
        "control": [
            "aspirin\x00 fever \x01\x02\x1b[31m cisplatin\x7f\x85 seizures\x00",
            "\x00\x01",
            "aspirin \x04 fever \x06 cisplatin \x13\x14 \x16 seizures",  # after a space
        ],
        "rtl-zero-width": [
            "\u202easpirin\u202c given \u200f\u200efever\u200b\u200c\u200d\ufeff after cisplatin",
            "\u200b\u2060\ufeff",
            "\u0627\u0644\u0645\u0631\u064a\u0636 took aspirin \u05d7\u05d5\u05dd fever",
        ],
        "combining": [
            "aspi\u0301rin and fe\u0308\u0308ver after cisplatin" + "\u0301" * 5,
            "Z" + "\u0336\u0301\u0327\u0308" * 250 + " developed fever",
        ],
        "word-long": [f"patient given {_word(3000, 1)} then aspirin"],
        "emoji-mixed": ["😀 aspirin 👩‍⚕️ fever 🏥🇫🇷" + "💊" * 300 + " cisplatin 😷"],
        "cjk": ["患者は頭痛を訴えアスピリンを服用した" * 80, "患者 aspirin 发烧 fever"],
        "base64": [f"attachment {blob} aspirin"],
        "rtf": [rtf, rtf * 30],
        "html": [
            "<script>alert('aspirin')</script><p onclick=x>fever &amp; cisplatin</p>"
            "<![CDATA[ seizures ]]><!-- -->",
        ],
        "lab-table": [lab, f"Labs:{lab}then aspirin"],
        "separators": ["=" * 3000, "-----\n=====\n*****\n" * 150 + fragments[0]],
        "url": [url, f"see {url} for aspirin dosing"],
        "clinical-long": [" ".join(fragments[:40]), "\n\n".join(fragments[40:60])],
    }
    answered = Expect(frozenset({OK}))
    return [c for klass, group in texts.items() for c in _every_unit(klass, group, answered)]


EXTREMES = ("word-120k", "emoji-40k")


def extreme_notes() -> dict[str, str]:
    """The two extremes: a 120,000-character single word and 40,000 emoji."""
    return dict(zip(EXTREMES, (_word(120_000, 2), _emoji(40_000, 4)), strict=True))


TOO_MANY_TOKENS = ("one-char-words-under", "word-120k", "emoji-40k")


def _limit_cases(limits: Limits) -> list[Case]:
    """Notes at and far over the size limits (and the two extremes the benchmark times alone)."""
    under = (limits.max_note_chars + 1) // 2  # one-character words: 2n - 1 characters
    texts = {
        "empty": ["", ""],
        "whitespace": [" ", "\n\t \r\n", "\u00a0\u2003\u3000\u2028"],
        "one-char-words-over": [_words(100_000)],
        "one-char-words-under": [_words(under)],
        **{name: [text] for name, text in extreme_notes().items()},
    }
    # Far over the token limit with any tokenizer that gives each word or emoji a token at least.
    tokens = _numbers(limits.max_request_tokens) + ".*max_request_tokens"
    refused = Expect(frozenset({INVALID}), (tokens,))
    cases = [
        Case(
            k, "analyze", (_req(t, 2, note_id=k),), expect=refused if k in TOO_MANY_TOKENS else None
        )
        for k, group in texts.items()
        for t in group
    ]
    return cases + [Case("empty", "analyze", (_req("", u),)) for u in UNITS]


def _field_cases(limits: Limits) -> list[Case]:
    """Every offset unit, unknown units (7 through the field, -1 as raw bytes), categories."""
    wide = "Café 😀 患者: the patient was given aspirin and developed fever 😀 after cisplatin é"
    cases = _every_unit("offset-units", [wide, SENTENCE])
    cases += [Case("bad-unit", "analyze", (_req(SENTENCE, u),)) for u in (4, 7, 2**31 - 1, -1)]
    refused = Expect(frozenset({INVALID}), ("offset_unit",))
    raw = [raw_request(SENTENCE.encode(), u) for u in (-1, 7)]
    cases += [Case("bad-unit", "raw", raw=(r,), expect=refused) for r in raw]
    wanted = [[c] for c in limits.categories] + [list(limits.categories) * 2]
    for unknown in (["Drug"], [""], [c.lower() for c in limits.categories], ["Chemical\x00"]):
        wanted.append([*limits.categories[:1], *unknown])
    cases += [Case("categories", "analyze", (_req(SENTENCE, 0, w),)) for w in wanted]
    return cases


def _raw_cases() -> list[Case]:
    """Invalid UTF-8 in each string field, bypassing the protobuf client (which refuses it)."""
    refused = Expect(frozenset({INVALID}), (r"(?i)utf-?8",))
    good = raw_request(SENTENCE.encode())
    payloads = [raw_request(b) for b in BAD_UTF8]
    payloads += [raw_request(SENTENCE.encode(), note_id=BAD_UTF8[0])]
    payloads += [raw_request(SENTENCE.encode(), category=BAD_UTF8[1])]
    cases = [Case("invalid-utf8", "raw", raw=(p,), expect=refused) for p in payloads]
    batch = raw_field(1, good) + raw_field(1, payloads[0]) + raw_field(1, good)
    cases.append(Case("invalid-utf8", "raw_batch", raw=(batch,), expect=refused))
    either = Expect(frozenset({OK, INVALID}), (r"(?i)utf-?8",))
    cases.append(Case("invalid-utf8", "raw_stream", raw=(good, payloads[1], good), expect=either))
    return cases


def _batch_cases(limits: Limits) -> list[Case]:
    """Batches mixing good and bad notes, one over max_batch_notes, streams cancelled midway."""
    fragments = clinical_fragments()
    mixed = [
        _req(fragments[0], 1, note_id="good-1"),
        _req("", 2, note_id="empty"),
        _req(fragments[1], 7, note_id="bad-unit"),
        _req("aspirin\x00\u200b😀 fever", 3, note_id="odd"),
        _req(fragments[2], 0, ["Drug"], note_id="bad-category"),
        _req(_words(limits.max_note_chars // 2 + 1), 2, note_id="over"),
        _req(fragments[3], 2, list(limits.categories[:1]), note_id="good-2"),
    ]
    over = [_req(f, 0) for f in fragments[: limits.max_batch_notes + 1]]
    long_note = _req(" ".join(fragments[:40]), 1)  # about 1000 words, so 1000 tokens at least
    heavy = [long_note] * min(limits.max_batch_notes, limits.max_request_tokens // 1000 + 1)
    too_heavy = Expect(frozenset({EXHAUSTED}), (_numbers(limits.max_request_tokens),))
    stream = [_req(f, i % 4, note_id=f"s{i}") for i, f in enumerate(fragments[10:18])]
    return [
        Case("batch-mixed", "batch", tuple(mixed)),
        Case("batch-mixed", "batch", tuple(reversed(mixed))),
        Case("batch-over", "batch", tuple(over)),
        Case("batch-over", "batch", tuple(heavy), expect=too_heavy),
        Case("stream-cancel", "stream", tuple(stream), cancel_after=4),
        Case("stream-cancel", "stream", tuple(mixed), cancel_after=3),
        Case("stream-cancel", "stream", tuple(mixed)),
    ]


CLASSES = (
    *("empty", "whitespace", "control", "invalid-utf8", "rtl-zero-width", "combining"),
    *("one-char-words-over", "one-char-words-under", "word-120k", "word-long", "emoji-40k"),
    *("emoji-mixed", "cjk", "base64", "rtf", "html", "lab-table", "separators", "url"),
    *("clinical-long", "offset-units", "bad-unit", "categories", "batch-mixed", "batch-over"),
    "stream-cancel",
)


def hostile_cases(limits: Limits) -> list[Case]:
    """The whole corpus: every hostile class at least once."""
    return [
        *_limit_cases(limits),
        *_text_cases(),
        *_field_cases(limits),
        *_raw_cases(),
        *_batch_cases(limits),
    ]
