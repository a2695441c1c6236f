"""Fuzzing a real server (tiny package, torch-fp32): every hostile note class, then Hypothesis.

The oracle (benchmarks/fuzz_oracle.py) allows only OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED,
checks every OK answer's offsets against the text in its unit, re-sends each note alone to see
the same entities, and after each hostile class proves a normal note still answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks.fuzz_cases import (
    CLASSES,
    Case,
    Limits,
    hostile_cases,
    predict,
)
from benchmarks.fuzz_oracle import Fuzzer, health_problems, response_problems, run_case
from benchmarks.fuzz_strategies import generated_cases
from serving.api import ner_pb2
from tests.serving.servers import config_for, running


def fuzzing(examples: int) -> settings:
    """Reproducible in CI: derandomized, no example database, no per-example deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


LIMITS = Limits(125_000, 64, 16_384, ("Chemical", "Disease"))


@pytest.mark.parametrize(
    ("unit", "spans", "problem"),
    [
        (3, [(1, 4, "Chemical", "")], "not on a character boundary"),  # inside "é"
        (2, [(5, 6, "Chemical", "")], "not on a character boundary"),  # inside "😀"
        (1, [(8, 15, "Drug", "")], "category not asked for"),
        (1, [(8, 15, "Chemical", ""), (10, 20, "Disease", "")], "out of order"),
        (1, [(7, 15, "Chemical", "")], "starts or ends with whitespace"),
        (1, [(8, 99, "Chemical", "")], "outside the text"),
        (0, [(8, 15, "Chemical", "aspirix")], "is not the slice"),
    ],
)
def test_the_oracle_flags_bad_answers(
    unit: Any, spans: list[tuple[int, int, str, str]], problem: str
) -> None:
    # Prepare: "Café 😀 aspirin fever"; aspirin is [8, 15) in code points
    req = ner_pb2.AnalyzeRequest(text="Café 😀 aspirin fever", offset_unit=unit, include_text=True)
    reply = ner_pb2.AnalyzeResponse(offset_unit=max(unit, 1), token_count=9, windows=1)
    for rank, (begin, end, category, text) in enumerate(spans, start=1):
        reply.entities.add(id=f"T{rank}", begin=begin, end=end, category=category, text=text)
    # Execute
    found = response_problems(req, reply, LIMITS)
    # Assert
    assert any(problem in p for p in found), found


def test_the_oracle_refuses_internal_and_wrong_messages() -> None:
    expect = predict(ner_pb2.AnalyzeRequest(text=" "), LIMITS)
    assert expect.problem(grpc.StatusCode.INVALID_ARGUMENT, "note: text is empty") is None
    assert "expected one of ['INVALID_ARGUMENT']" in str(
        expect.problem(grpc.StatusCode.INTERNAL, "")
    )
    assert "names none of" in str(expect.problem(grpc.StatusCode.INVALID_ARGUMENT, "bad"))


@pytest.fixture(scope="module")
def fuzzer(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    cfg = config_for(tiny_package, state_dir=tmp_path_factory.mktemp("state"), metrics_port=0)
    with running(cfg) as (server, port):
        fz = Fuzzer(f"127.0.0.1:{port}", f"http://127.0.0.1:{server.metrics_port}/metrics")
        yield fz
        fz.close()


@pytest.fixture(scope="module")
def corpus(fuzzer: Fuzzer) -> list[Case]:
    return hostile_cases(fuzzer.limits)


def test_the_corpus_has_every_class(corpus: list[Case]) -> None:
    assert sorted({c.klass for c in corpus}) == sorted(CLASSES)


@pytest.mark.parametrize("klass", CLASSES)
def test_hostile_class(fuzzer: Fuzzer, corpus: list[Case], klass: str) -> None:
    # Prepare
    cases = [c for c in corpus if c.klass == klass]
    # Execute
    verdicts = [run_case(fuzzer, case) for case in cases]
    # Assert
    problems = [f"case {i}: {p}" for i, v in enumerate(verdicts) for p in v.problems]
    assert cases and not problems, "\n".join(problems)


@pytest.mark.parametrize(("kind", "examples"), [("analyze", 1200), ("batch", 400), ("stream", 400)])
def test_generated(fuzzer: Fuzzer, kind: str, examples: int) -> None:
    @fuzzing(examples)
    @given(generated_cases("generated", kind, fuzzer.limits))
    def judged(case: Case) -> None:
        verdict = run_case(fuzzer, case, check_health=False)
        assert not verdict.problems, "\n".join(verdict.problems)

    judged()


def test_healthy_after_fuzzing(fuzzer: Fuzzer) -> None:
    assert health_problems(fuzzer) == []
