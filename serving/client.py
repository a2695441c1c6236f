"""A small typed Python client for `appliance.ner.v1.NerService` and the curation service."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.api import curation_pb2, curation_pb2_grpc, ner_pb2, ner_pb2_grpc
from serving.tls import channel_credentials

UNITS = {
    "code_point": ner_pb2.OFFSET_UNIT_CODE_POINT,
    "utf16": ner_pb2.OFFSET_UNIT_UTF16,
    "utf8": ner_pb2.OFFSET_UNIT_UTF8,
}
KINDS = {
    "corrected": curation_pb2.ANNOTATION_KIND_CORRECTED,
    "accepted": curation_pb2.ANNOTATION_KIND_ACCEPTED,
    "rejected": curation_pb2.ANNOTATION_KIND_REJECTED,
}
Entity = tuple[int, int, str]  # begin, end (half-open), category


def request(
    text: str,
    note_id: str = "",
    unit: str = "code_point",
    categories: Sequence[str] = (),
    include_text: bool = False,
) -> ner_pb2.AnalyzeRequest:
    """An AnalyzeRequest; `unit` is one of code_point, utf16, utf8."""
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} unknown; choose one of {sorted(UNITS)}")
    return ner_pb2.AnalyzeRequest(
        note_id=note_id,
        text=text,
        offset_unit=UNITS[unit],
        categories=list(categories),
        include_text=include_text,
    )


class NerClient:
    """`NerClient("host:port")` (plaintext) or with `ca`, and `cert`+`key` for mTLS."""

    def __init__(
        self,
        target: str,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        timeout: float = 30.0,
        server_name: str | None = None,
    ) -> None:
        self.timeout = timeout
        if ca is None and cert is None:
            self.channel = grpc.insecure_channel(target)
        else:
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self.channel = grpc.secure_channel(target, channel_credentials(ca, cert, key), options)
        self.stub = ner_pb2_grpc.NerServiceStub(self.channel)
        self.curation = curation_pb2_grpc.CurationServiceStub(self.channel)

    def analyze(self, text: str, **fields: object) -> ner_pb2.AnalyzeResponse:
        """Annotate one note (fields: note_id, unit, categories, include_text)."""
        response: ner_pb2.AnalyzeResponse = self.stub.Analyze(
            request(text, **fields),  # type: ignore[arg-type]
            timeout=self.timeout,
        )
        return response

    def analyze_batch(self, requests: Sequence[ner_pb2.AnalyzeRequest]) -> list[ner_pb2.NoteResult]:
        """Annotate several notes; each result has its own status code (0: OK)."""
        batch = ner_pb2.AnalyzeBatchRequest(notes=list(requests))
        return list(self.stub.AnalyzeBatch(batch, timeout=self.timeout).results)

    def stream(
        self, requests: Iterable[ner_pb2.AnalyzeRequest], timeout: float | None = None
    ) -> Iterator[ner_pb2.NoteResult]:
        """Bulk back-fill: one result per request, in order."""
        return iter(self.stub.AnalyzeStream(iter(requests), timeout=timeout))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until grpc.health.v1 says SERVING (a model is loaded); TimeoutError otherwise."""
        health = health_pb2_grpc.HealthStub(self.channel)
        until = time.monotonic() + timeout
        while True:
            try:
                check = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if check.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() >= until:
                raise TimeoutError(f"the server was not SERVING within {timeout:.0f} s")
            time.sleep(0.2)

    def info(self) -> ner_pb2.InfoResponse:
        response: ner_pb2.InfoResponse = self.stub.GetInfo(
            ner_pb2.GetInfoRequest(), timeout=self.timeout
        )
        return response

    def submit_annotation(
        self,
        note_id: str,
        revision: int,
        text: str,
        entities: Iterable[Entity],
        annotator: str,
        kind: str = "corrected",
        model_version: str = "",
        unit: str = "code_point",
    ) -> curation_pb2.SubmitAnnotationResponse:
        """Store one annotated revision of a note (a retry of the same revision is answered
        DUPLICATE, so it is safe to repeat); `kind`: corrected, accepted or rejected."""
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} unknown; choose one of {sorted(KINDS)}")
        if unit not in UNITS:
            raise ValueError(f"unit: {unit!r} unknown; choose one of {sorted(UNITS)}")
        spans = [curation_pb2.AnnotatedEntity(begin=b, end=e, category=c) for b, e, c in entities]
        submission = curation_pb2.SubmitAnnotationRequest(
            note_id=note_id,
            revision=revision,
            text=text,
            entities=spans,
            offset_unit=UNITS[unit],
            annotator=annotator,
            kind=KINDS[kind],
            model_version=model_version,
        )
        response: curation_pb2.SubmitAnnotationResponse = self.curation.SubmitAnnotation(
            submission, timeout=self.timeout
        )
        return response

    def delete_note(self, note_id: str, reason: str) -> bool:
        """Remove a note from the box's store for good; False when none was stored."""
        deleted: curation_pb2.DeleteNoteResponse = self.curation.DeleteNote(
            curation_pb2.DeleteNoteRequest(note_id=note_id, reason=reason), timeout=self.timeout
        )
        return deleted.deleted

    def store_stats(self) -> curation_pb2.GetStoreStatsResponse:
        """What the box's note store holds (counts only)."""
        stats: curation_pb2.GetStoreStatsResponse = self.curation.GetStoreStats(
            curation_pb2.GetStoreStatsRequest(), timeout=self.timeout
        )
        return stats

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NerClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
