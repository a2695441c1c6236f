"""`appliance serve` / `annotate --remote` end to end, and the spaCy component setting doc.ents."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import spacy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spacy.tokens import Doc

import serving.spacy_component  # noqa: F401 - registers the appliance_ner factory
from appliance.cli import main
from serving.client import NerClient
from serving.spacy_component import MISALIGNED, UNPLACED

NOTE = "the patient was given aspirin and developed fever after cisplatin"


@pytest.fixture(scope="module")
def served(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`appliance serve` in a subprocess; yields HOST:PORT; SIGTERM must drain and exit 0."""
    toml = tmp_path_factory.mktemp("cfg") / "serving.toml"
    # torch-fp32, so remote scores can be compared with local `annotate` exactly
    toml.write_text(
        f'[serving]\npackage = "{tiny_package}"\nbackend = "torch-fp32"\nmax_queue_delay_ms = 1.0\n'
        f'note_store = "{toml.parent / "notes.sqlite"}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(toml), "--port", "0",
         "--state-dir", str(tmp_path_factory.mktemp("state"))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"serving on (\S+)", line)
    assert match, line
    _wait_serving(match.group(1))
    try:
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _wait_serving(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for answer in stub.Watch(health_pb2.HealthCheckRequest(), timeout=120):
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return


def test_annotate_remote_matches_local(
    served: str, tiny_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["annotate", "--remote", served, "--text", NOTE]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["annotate", "--package", str(tiny_package), "--text", NOTE]) == 0
    local = json.loads(capsys.readouterr().out)
    assert {"aspirin", "fever", "cisplatin"} <= {e["text"] for e in remote}
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in remote] == [
        (e["start"], e["end"], e["label"], e["text"]) for e in local
    ]
    assert all(abs(r["score"] - x["score"]) < 1e-3 for r, x in zip(remote, local, strict=True))


def test_annotate_remote_reports_errors(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", "--remote", served, "--text", "  "]) != 0
    assert "INVALID_ARGUMENT: note: text is empty" in capsys.readouterr().err
    assert main(["annotate", "--text", NOTE]) != 0
    assert "give --package (local) or --remote HOST:PORT" in capsys.readouterr().err


def test_spacy_component_sets_ents(served: str) -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe("appliance_ner", config={"target": served})
    doc = nlp(NOTE)
    assert {(e.text, e.label_) for e in doc.ents} >= {
        ("aspirin", "Chemical"),
        ("fever", "Disease"),
        ("cisplatin", "Chemical"),
    }
    assert doc.user_data[MISALIGNED] == []


def test_spacy_component_submits_a_corrected_doc_in_one_call(served: str) -> None:
    # Prepare: the clinician keeps one entity and adds one the model may have missed
    nlp = spacy.blank("en")
    nlp.add_pipe("appliance_ner", config={"target": served})
    doc = nlp(NOTE)
    shown = doc.user_data["appliance_model_version"]
    doc.ents = [doc.char_span(22, 29, label="Chemical"), doc.char_span(44, 49, label="Disease")]
    pipe = nlp.get_pipe("appliance_ner")

    # Execute
    first = pipe.submit(doc, note_id="ward-7-note-1", revision=1, annotator="coder-7")
    retry = pipe.submit(doc, note_id="ward-7-note-1", revision=1, annotator="coder-7")

    # Assert
    assert (first, retry) == ("stored", "duplicate") and shown == "fixed"
    with NerClient(served) as client:
        assert client.store_stats().entities_by_category == {"Chemical": 1, "Disease": 1}


def test_spacy_component_widens_misaligned_entities(served: str) -> None:
    nlp = spacy.blank("en")
    # A whitespace tokenizer keeps "aspirin," as one token: the entity "aspirin" ends inside it.
    nlp.tokenizer = lambda text: Doc(nlp.vocab, words=text.split(" "))
    nlp.add_pipe("appliance_ner", config={"target": served})
    text = "the patient was given aspirin, and developed fever"
    doc = nlp(text)
    assert ("aspirin,", "Chemical") in {(e.text, e.label_) for e in doc.ents}
    assert (22, 29, "Chemical") in doc.user_data[MISALIGNED]
    # Nothing is dropped silently: every served entity is in doc.ents or listed as unplaced.
    with NerClient(served) as client:
        served_entities = client.analyze(text).entities
    for e in served_entities:
        placed = any(
            ent.start_char <= e.begin and e.end <= ent.end_char and ent.label_ == e.category
            for ent in doc.ents
        )
        unplaced = any(
            b <= e.begin and e.end <= end and label == e.category
            for b, end, label in doc.user_data[UNPLACED]
        )
        assert placed != unplaced, (e.begin, e.end, e.category)
