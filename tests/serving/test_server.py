"""A real server on port 0 with the tiny package: answers, offsets, every status code, metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from appliance.notes import Note
from serving.api import ner_pb2
from serving.batching import DeadlinePassed
from serving.client import NerClient, request
from serving.server import NerServer
from tests.serving.servers import config_for, running

BAD_UNIT: Any = 7  # a value from a newer proto this server does not know
NOTE = "the patient was given aspirin and developed fever after cisplatin with seizures"
# Multi-byte text before, between and after the entities: accents, emoji (2 UTF-16 units), CJK.
WIDE = "Café 😀 患者: the patient was given aspirin and developed fever 😀 after cisplatin 患者 é"


@pytest.fixture(scope="module")
def server(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NerServer]:
    cfg = config_for(
        tiny_package,
        state_dir=tmp_path_factory.mktemp("state"),
        metrics_port=0,
        max_note_chars=2000,
        max_batch_notes=3,
    )
    with running(cfg) as (srv, port):
        srv.port = port  # type: ignore[attr-defined]
        yield srv


def test_analyze_finds_entities(client: NerClient) -> None:
    response = client.analyze(NOTE, note_id="n1", include_text=True)
    found = {(e.text, e.category) for e in response.entities}
    assert {("aspirin", "Chemical"), ("fever", "Disease"), ("cisplatin", "Chemical")} <= found
    assert [e.id for e in response.entities] == [f"T{i + 1}" for i in range(len(found))]
    assert all(NOTE[e.begin : e.end] == e.text and 0 < e.score <= 1 for e in response.entities)
    assert (response.note_id, response.model_version, response.windows) == ("n1", "fixed", 1)
    assert response.token_count > len(NOTE.split())
    assert response.timings.infer_ms > 0 and response.timings.tokenize_ms > 0
    assert client.analyze(NOTE).entities[0].text == ""  # text only when asked


def test_exact_offsets_in_every_unit(client: NerClient) -> None:
    cp = client.analyze(WIDE, unit="code_point", include_text=True).entities
    assert {e.text for e in cp} >= {"aspirin", "fever", "cisplatin"}
    utf16 = client.analyze(WIDE, unit="utf16").entities
    utf8 = client.analyze(WIDE, unit="utf8").entities
    raw16, raw8 = WIDE.encode("utf-16-le"), WIDE.encode("utf-8")
    for a, b, c in zip(cp, utf16, utf8, strict=True):
        assert WIDE[a.begin : a.end] == a.text
        assert raw16[2 * b.begin : 2 * b.end].decode("utf-16-le") == a.text
        assert raw8[c.begin : c.end].decode("utf-8") == a.text
    aspirin = next(e for e in cp if e.text == "aspirin")
    # "Café 😀 患者: " is 11 code points, 12 UTF-16 units (😀 is a pair), 19 UTF-8 bytes
    # (é 2, 😀 4, 患 3, 者 3); "the patient was given " adds 22 in every unit.
    index = list(cp).index(aspirin)
    assert (aspirin.begin, utf16[index].begin, utf8[index].begin) == (33, 34, 41)


def test_category_filter(client: NerClient) -> None:
    chemicals = client.analyze(NOTE, categories=["Chemical"]).entities
    assert chemicals and {e.category for e in chemicals} == {"Chemical"}


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (request("   \n"), "text is empty"),
        (
            request("x" * 2001, note_id="big"),
            "note 'big': text has 2001 characters; the limit is 2000",
        ),
        (request(NOTE, categories=["Drug"]), r"unknown categories \['Drug'\]"),
        (ner_pb2.AnalyzeRequest(text=NOTE, offset_unit=BAD_UNIT), "offset_unit 7 is unknown"),
    ],
)
def test_invalid_argument(client: NerClient, req: ner_pb2.AnalyzeRequest, match: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Analyze(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(match, err.value.details()), err.value.details()


def test_batch_has_a_status_per_note(client: NerClient) -> None:
    results = client.analyze_batch([request(NOTE, "a"), request(" ", "b"), request(WIDE, "c")])
    assert [(r.note_id, r.code) for r in results] == [("a", 0), ("b", 3), ("c", 0)]
    assert "note 'b': text is empty" in results[1].message
    assert results[0].response.entities and results[2].response.entities
    with pytest.raises(grpc.RpcError) as err:
        client.analyze_batch([request(NOTE)] * 4)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4 notes; the limit is 3 (max_batch_notes)" in err.value.details()


def test_stream_answers_in_order_and_survives_bad_notes(client: NerClient) -> None:
    notes = [request(NOTE, "s1"), request("", "s2"), request(WIDE, "s3")]
    results = list(client.stream(notes, timeout=30))
    assert [(r.note_id, r.code) for r in results] == [("s1", 0), ("s2", 3), ("s3", 0)]


def test_get_info(client: NerClient) -> None:
    info = client.info()
    assert (info.backend, info.model_version, list(info.categories)) == (
        "torch-fp32",
        "fixed",
        ["Chemical", "Disease"],
    )
    assert info.labels[0] == "O" and info.fingerprint and info.limits.max_note_chars == 2000


def test_reflection_lists_the_service(server: NerServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # type: ignore[attr-defined]
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert {"appliance.ner.v1.NerService", "grpc.health.v1.Health"} <= names


def test_expired_work_is_dropped(server: NerServer, client: NerClient) -> None:
    model = server.engine.model
    assert model is not None
    windows = model.encode([Note("d", NOTE)])
    future = server.engine.batcher.submit(model.backend, windows, time.monotonic() - 1)
    with pytest.raises(DeadlinePassed, match="deadline passed while queued"):
        future.result(timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Analyze(request(NOTE * 20), timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.analyze(NOTE).entities  # the server is unharmed


def test_queue_full_is_resource_exhausted(tiny_package: Path, tmp_path: Path) -> None:
    cfg = config_for(tiny_package, state_dir=tmp_path, max_queue=1, token_budget=1)
    long_note = " ".join([NOTE] * 20)
    with running(cfg) as (_, port), NerClient(f"127.0.0.1:{port}") as c:

        def call(_: int) -> str:
            try:
                c.analyze(long_note)
                return "OK"
            except grpc.RpcError as err:
                assert "queue is full (1 requests)" in err.details()
                return err.code().name

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(call, range(12)))
    assert "RESOURCE_EXHAUSTED" in codes and "OK" in codes
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}


def test_exporter_serves_the_metrics(server: NerServer, client: NerClient) -> None:
    client.analyze(NOTE)
    with pytest.raises(grpc.RpcError):
        client.analyze(" ")
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    for name in (
        'appliance_ner_requests_total{code="OK",method="Analyze"}',
        'appliance_ner_requests_total{code="INVALID_ARGUMENT",method="Analyze"}',
        "appliance_ner_request_seconds_bucket",
        "appliance_ner_queue_seconds_bucket",
        "appliance_ner_inference_seconds_bucket",
        "appliance_ner_batch_windows_bucket",
        "appliance_ner_batch_tokens_bucket",
        "appliance_ner_note_windows_bucket",
        'appliance_ner_entities_total{category="Chemical"}',
        "appliance_ner_in_flight",
        "appliance_ner_queue_depth",
        'appliance_ner_model_info{backend="torch-fp32",quantization="none",version="fixed"}',
        "appliance_ner_model_swaps_total",
        "appliance_ner_model_swap_failures_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        'appliance_ner_heap_bytes{state="allocated"}',
    ):
        assert name in body, name
