"""Admission by tokens: per-note and per-request limits, malformed bytes, over-long words."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serving.api import ner_pb2
from serving.client import NerClient, request
from serving.server import NerServer
from tests.serving.servers import config_for, running

SENTENCE = "the patient was given aspirin and developed fever after cisplatin with seizures . "
LIMIT = 1500  # max_request_tokens of the server below


@pytest.fixture(scope="module")
def server(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NerServer]:
    cfg = config_for(
        tiny_package,
        state_dir=tmp_path_factory.mktemp("state"),
        metrics_port=0,
        max_request_tokens=LIMIT,
        max_queue_tokens=4 * LIMIT,
    )
    with running(cfg) as (srv, port):
        srv.port = port  # type: ignore[attr-defined]
        yield srv


def _tokens(client: NerClient, text: str) -> int:
    return int(client.analyze(text).token_count)


def test_one_note_over_the_token_limit_can_never_fit(client: NerClient) -> None:
    # Prepare
    unit = _tokens(client, SENTENCE)
    text = SENTENCE * (LIMIT // unit + 2)

    # Execute
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Analyze(request(text, note_id="long"), timeout=30)

    # Assert
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = re.search(r"note 'long': (\d+) model tokens; the limit is 1500", err.value.details())
    assert found and int(found.group(1)) > LIMIT, err.value.details()
    assert client.analyze(SENTENCE).entities  # the server is unharmed


def test_a_batch_over_the_token_limit_is_resource_exhausted(client: NerClient) -> None:
    half = SENTENCE * max(1, (LIMIT // 2) // _tokens(client, SENTENCE))
    part = _tokens(client, half)
    assert part <= LIMIT < 3 * part  # each note alone fits, the three together do not
    with pytest.raises(grpc.RpcError) as err:
        client.analyze_batch([request(half, "a"), request(half, "b"), request(half, "c")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"hold \d+ model tokens; the limit is 1500", err.value.details())


def test_a_batch_refuses_only_its_over_size_note(client: NerClient) -> None:
    huge = SENTENCE * (LIMIT // 10)
    results = client.analyze_batch([request(SENTENCE, "ok"), request(huge, "huge")])
    assert [(r.note_id, r.code) for r in results] == [("ok", 0), ("huge", 3)]
    assert "the limit is 1500 (max_request_tokens)" in results[1].message
    assert results[0].response.entities


@pytest.mark.parametrize("word", ["a" * 900, "😀💊" * 120, "患者" * 150])
def test_an_over_long_word_is_answered_with_exact_offsets(client: NerClient, word: str) -> None:
    text = f"Given aspirin {word} then fever ."
    for unit, encoding, width in (("utf16", "utf-16-le", 2), ("utf8", "utf-8", 1)):
        response = client.analyze(text, unit=unit, include_text=True)
        assert response.windows > 1  # the word was cut between tokens, never one huge window
        data = text.encode(encoding)
        for e in response.entities:
            assert data[e.begin * width : e.end * width].decode(encoding) == e.text
    response = client.analyze(text, include_text=True)  # code points
    assert response.entities  # the checks above had entities to check
    assert all(text[e.begin : e.end] == e.text for e in response.entities)


def _raw_unary(port: int, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/appliance.ner.v1.NerService/{method}")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=10)
    return err.value


INVALID_UTF8 = b"\x0a\x02n1\x12\x04ab\xff\xfe"  # note_id "n1", text with bytes that are not UTF-8


@pytest.mark.parametrize("method", ["Analyze", "AnalyzeBatch"])
def test_bytes_that_do_not_parse_are_invalid_argument(server: NerServer, method: str) -> None:
    payload = INVALID_UTF8 if method == "Analyze" else b"\x0a" + bytes([len(INVALID_UTF8)])
    payload += b"" if method == "Analyze" else INVALID_UTF8
    err = _raw_unary(server.port, method, payload)  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid UTF-8" in err.details()


def test_a_stream_answers_a_malformed_note_and_goes_on(server: NerServer) -> None:
    good = request(SENTENCE, "g").SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # type: ignore[attr-defined]
        call = channel.stream_stream(
            "/appliance.ner.v1.NerService/AnalyzeStream",
            response_deserializer=ner_pb2.NoteResult.FromString,
        )
        results = list(call(iter([good, INVALID_UTF8, good]), timeout=30))
    assert [r.code for r in results] == [0, 3, 0]
    assert "invalid UTF-8" in results[1].message


def test_limits_and_queue_tokens_are_published(server: NerServer, client: NerClient) -> None:
    limits = client.info().limits
    assert (limits.max_request_tokens, limits.max_queue_tokens) == (LIMIT, 4 * LIMIT)
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "appliance_ner_queue_tokens 0.0" in body  # nothing admitted is left over
