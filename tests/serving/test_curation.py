"""The curation service on a real server: submit, retry, supersede, delete, stats and metrics,
100 concurrent submitters, the offsets of every unit, and a kill -9 mid-stream of submissions."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from appliance.note_store import NoteStore
from serving.api import curation_pb2
from serving.client import NerClient
from serving.server import NerServer
from tests.serving.servers import config_for, running

NOTE = "Cisplatin-induced nephrotoxicity was treated with magnesium."
CISPLATIN, NEPHRO = (0, 9, "Chemical"), (18, 32, "Disease")


@pytest.fixture(scope="module")
def served(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NerServer, int]]:
    state = tmp_path_factory.mktemp("curation")
    cfg = config_for(
        tiny_package, state_dir=state, note_store=state / "notes.sqlite", metrics_port=0
    )
    with running(cfg) as (server, port):
        yield server, port


@pytest.fixture()
def client(served: tuple[NerServer, int]) -> Iterator[NerClient]:
    with NerClient(f"127.0.0.1:{served[1]}") as c:
        yield c


def _outcome(response: curation_pb2.SubmitAnnotationResponse) -> str:
    return curation_pb2.SubmitAnnotationResponse.Outcome.Name(response.outcome)


def _stored(server: NerServer, note_id: str) -> tuple[int, tuple[tuple[int, int, str], ...]]:
    assert server.store is not None
    notes = {n.note_id: n for n in server.store.snapshot().notes}
    note = notes[note_id]
    return note.revision, tuple((e.start, e.end, e.label) for e in note.entities)


def test_a_submission_is_stored_once_and_superseded_by_a_later_revision(
    served: tuple[NerServer, int], client: NerClient
) -> None:
    # Execute
    first = client.submit_annotation("n-1", 1, NOTE, [CISPLATIN], "coder-7")
    retry = client.submit_annotation("n-1", 1, NOTE, [CISPLATIN], "coder-7")
    later = client.submit_annotation("n-1", 2, NOTE, [CISPLATIN, NEPHRO], "coder-7")
    stale = client.submit_annotation("n-1", 1, NOTE, [CISPLATIN], "coder-7")

    # Assert
    assert [_outcome(r) for r in (first, retry, later, stale)] == [
        "OUTCOME_STORED",
        "OUTCOME_DUPLICATE",
        "OUTCOME_STORED",
        "OUTCOME_STALE",
    ]
    assert stale.revision == 2
    assert _stored(served[0], "n-1") == (2, (CISPLATIN, NEPHRO))


@pytest.mark.parametrize(
    ("fields", "code", "match"),
    [
        ({"entities": [(0, 99, "Chemical")]}, "INVALID_ARGUMENT", r"^entities\[0\]"),
        ({"entities": [(0, 9, "Drug")]}, "INVALID_ARGUMENT", r"^entities\[0\]"),
        ({"entities": [(0, 9, "Chemical"), (5, 12, "Disease")]}, "INVALID_ARGUMENT", "entities"),
        ({"revision": 0}, "INVALID_ARGUMENT", r"^revision"),
        ({"note_id": "a\x07b"}, "INVALID_ARGUMENT", r"^note_id"),
        ({"annotator": ""}, "INVALID_ARGUMENT", r"^annotator"),
        ({"text": ""}, "INVALID_ARGUMENT", r"^text"),
        ({"text": "x" * 125_001}, "INVALID_ARGUMENT", r"^text"),
    ],
)
def test_bad_submissions_name_the_field(
    client: NerClient, fields: dict[str, object], code: str, match: str
) -> None:
    # Prepare
    values: dict[str, object] = {
        "note_id": "bad-1",
        "revision": 1,
        "text": NOTE,
        "entities": [CISPLATIN],
        "annotator": "coder-7",
    }
    values.update(fields)

    # Execute
    with pytest.raises(grpc.RpcError) as err:
        client.submit_annotation(**values)  # type: ignore[arg-type]

    # Assert
    details = str(err.value.details())
    assert err.value.code().name == code
    assert re.search(match, details), details
    assert NOTE not in details


def test_an_unspecified_kind_and_an_unparsable_request_are_the_callers_error(
    served: tuple[NerServer, int],
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        stub = channel.unary_unary(
            "/appliance.curation.v1.CurationService/SubmitAnnotation",
            request_serializer=lambda b: b,
            response_deserializer=curation_pb2.SubmitAnnotationResponse.FromString,
        )
        unspecified = curation_pb2.SubmitAnnotationRequest(
            note_id="k-1", revision=1, text=NOTE, annotator="coder-7"
        ).SerializeToString()
        bad_utf8 = b"\x0a\x03k-2\x1a\x02\xff\xfe"  # note_id "k-2", text: invalid UTF-8
        for payload, start in ((unspecified, "kind: "), (bad_utf8, "the request is not a valid")):
            with pytest.raises(grpc.RpcError) as err:
                stub(payload, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert str(err.value.details()).startswith(start), err.value.details()


def test_offsets_in_utf16_and_utf8_are_stored_as_code_points(
    served: tuple[NerServer, int], client: NerClient
) -> None:
    # Prepare: "😀 " is 2 UTF-16 units and 5 UTF-8 bytes before the drug
    text = "😀 aspirin caused fever"
    utf16 = [(3, 10, "Chemical"), (18, 23, "Disease")]
    utf8 = [(5, 12, "Chemical"), (20, 25, "Disease")]

    # Execute
    client.submit_annotation("u-16", 1, text, utf16, "coder-7", unit="utf16")
    client.submit_annotation("u-8", 1, text, utf8, "coder-7", unit="utf8")
    with pytest.raises(grpc.RpcError) as inside:
        client.submit_annotation("u-x", 1, text, [(1, 10, "Chemical")], "coder-7", unit="utf16")

    # Assert
    expected = (1, ((2, 9, "Chemical"), (17, 22, "Disease")))
    assert _stored(served[0], "u-16") == expected
    assert _stored(served[0], "u-8") == expected
    assert inside.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not on a character boundary" in str(inside.value.details())


def test_conflicts_deletions_and_stats(served: tuple[NerServer, int], client: NerClient) -> None:
    # Prepare
    client.submit_annotation("d-1", 1, NOTE, [CISPLATIN], "coder-7")
    before = client.store_stats()

    # Execute
    with pytest.raises(grpc.RpcError) as conflict:
        client.submit_annotation("d-1", 1, NOTE, [NEPHRO], "coder-7")
    deleted = client.delete_note("d-1", "consent withdrawn")
    again = client.delete_note("d-1", "consent withdrawn")
    with pytest.raises(grpc.RpcError) as refused:
        client.submit_annotation("d-1", 2, NOTE, [CISPLATIN], "coder-7")
    after = client.store_stats()

    # Assert
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert deleted and not again
    assert after.notes == before.notes - 1 and after.deletions == before.deletions + 1
    assert "d-1" not in {n.note_id for n in served[0].store.snapshot().notes}  # type: ignore[union-attr]


def test_metrics_count_the_store_and_never_show_text(
    served: tuple[NerServer, int], client: NerClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    caplog.set_level(logging.DEBUG)
    secret = "Patient Zed Quux took warfarin."

    # Execute
    client.submit_annotation("m-1", 1, secret, [(22, 30, "Chemical")], "coder-9", kind="accepted")
    client.submit_annotation("m-2", 1, secret, [], "coder-9", kind="rejected")
    port = served[0].metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    # Assert
    stats = client.store_stats()
    assert (
        f'appliance_note_store_notes{{kind="accepted"}} {stats.notes_by_kind["accepted"]}.0' in body
    )
    assert 'appliance_note_store_notes{kind="rejected"}' in body
    assert "appliance_note_store_up 1.0" in body
    assert 'appliance_curation_submits_total{kind="accepted",outcome="stored"}' in body
    assert "Zed Quux" not in body
    assert not [r for r in caplog.records if "Zed Quux" in r.getMessage()]
    assert any("note m-1 revision 1 from local: stored" in r.getMessage() for r in caplog.records)


def test_a_hundred_concurrent_submitters_with_retries_store_each_note_once(
    served: tuple[NerServer, int],
) -> None:
    # Prepare: each submitter sends its note twice, and a later revision of every tenth twice
    target = f"127.0.0.1:{served[1]}"

    def submitter(i: int) -> list[str]:
        with NerClient(target, timeout=60) as c:
            sent = [c.submit_annotation(f"c-{i}", 1, NOTE, [CISPLATIN], f"coder-{i}")]
            sent.append(c.submit_annotation(f"c-{i}", 1, NOTE, [CISPLATIN], f"coder-{i}"))
            if i % 10 == 0:
                for _ in range(2):
                    sent.append(c.submit_annotation(f"c-{i}", 2, NOTE, [NEPHRO], f"coder-{i}"))
            return [_outcome(r) for r in sent]

    # Execute
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        outcomes = [o for result in pool.map(submitter, range(100)) for o in result]

    # Assert
    assert outcomes.count("OUTCOME_STORED") == 110
    assert outcomes.count("OUTCOME_DUPLICATE") == 110
    notes = {n.note_id: n for n in served[0].store.snapshot().notes}  # type: ignore[union-attr]
    mine = {k: v for k, v in notes.items() if k.startswith("c-")}
    assert len(mine) == 100
    assert all(n.revision == (2 if int(k[2:]) % 10 == 0 else 1) for k, n in mine.items())


SERVE = """
import sys
from serving.config import ServingConfig
from serving.server import create_server
cfg = ServingConfig(package=sys.argv[1], state_dir=sys.argv[2], note_store=sys.argv[3], port=0,
                    backend="torch-fp32")
server, port = create_server(cfg)
server.start()
assert server.wait_ready(120)
print(port, flush=True)
import time
time.sleep(600)
"""


def test_a_killed_server_keeps_every_acknowledged_submission(
    tiny_package: Path, tmp_path: Path
) -> None:
    # Prepare: a server in its own process, a client submitting as fast as it can
    store = tmp_path / "notes.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(tiny_package), str(tmp_path), str(store)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with NerClient(f"127.0.0.1:{port}", timeout=10) as c:
            # Execute: kill -9 while submissions are in flight
            started = time.monotonic()
            for i in range(10_000):
                if i == 40:
                    proc.send_signal(signal.SIGKILL)
                try:
                    c.submit_annotation(f"k-{i}", 1, NOTE, [CISPLATIN], "coder-7")
                except grpc.RpcError:
                    break
                acknowledged.append(f"k-{i}")
            assert time.monotonic() - started < 60
    finally:
        proc.kill()
        proc.wait()

    # Assert: every acknowledged submission is there, and the file is whole
    with NoteStore(store) as reopened:
        held = {n.note_id for n in reopened.snapshot().notes}
        assert len(acknowledged) >= 40 and set(acknowledged) <= held
        assert reopened.stats().notes == len(held)
