"""The `appliance.curation.v1.CurationService` servicer: thin, over the box's note store.

A submission is turned into an `Annotation` (its offsets into code points), validated against the
served model's categories and written by `NoteStore.submit`, which returns only once the record
is on disk. Errors become the statuses `proto/serving/api/curation.proto` lists; the message names
the field at fault and never quotes the note. The log gets the note id, the revision, the actor
and the outcome; never the text.
"""

from __future__ import annotations

import logging
import sqlite3
from bisect import bisect_left
from collections.abc import Callable

import grpc

from appliance.annotations import Annotation, AnnotationError
from appliance.note_store import NoteDeleted, NoteStore, RevisionConflict, StoreError
from appliance.notes import EntitySpan
from serving.api import curation_pb2 as pb
from serving.authz import actor
from serving.metrics import ServingMetrics
from serving.offsets import CODE_POINT, UNITS, offset_table
from serving.rpc import RequestError, measured

log = logging.getLogger(__name__)
KIND_NAMES = {
    pb.ANNOTATION_KIND_CORRECTED: "corrected",
    pb.ANNOTATION_KIND_ACCEPTED: "accepted",
    pb.ANNOTATION_KIND_REJECTED: "rejected",
}
OUTCOMES = {
    "stored": pb.SubmitAnnotationResponse.OUTCOME_STORED,
    "duplicate": pb.SubmitAnnotationResponse.OUTCOME_DUPLICATE,
    "stale": pb.SubmitAnnotationResponse.OUTCOME_STALE,
}


def _status(err: Exception) -> RequestError | None:
    """The gRPC status of a store or validation error (None: a fault of the server)."""
    if isinstance(err, AnnotationError):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    if isinstance(err, RevisionConflict):
        return RequestError(grpc.StatusCode.ALREADY_EXISTS, str(err))
    if isinstance(err, NoteDeleted):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(err))
    if not isinstance(err, StoreError | sqlite3.Error):
        return None
    cause = f"{err} {err.__cause__ or ''}".lower()
    if "disk is full" in cause or "no space" in cause:
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the note store's disk is full")
    if "locked" in cause or "busy" in cause:
        return RequestError(grpc.StatusCode.UNAVAILABLE, "the note store is busy; retry")
    return None


_measured = measured(
    lambda s: (s.metrics.curation_requests, s.metrics.curation_seconds, None), refusal=_status
)


def code_points(text: str, unit: int, offset: int, field: str) -> int:
    """`offset` in `unit` as a code-point index into `text`; AnnotationError if none is there."""
    if unit == CODE_POINT:
        return offset
    table = offset_table(text, unit)
    index = bisect_left(table, offset)
    if index == len(table) or table[index] != offset:
        raise AnnotationError(field, f"offset {offset} is not on a character boundary of the text")
    return index


def annotation_of(request: pb.SubmitAnnotationRequest) -> Annotation:
    """The request as an `Annotation` with code-point offsets (validated by the store)."""
    if request.offset_unit not in UNITS:
        raise AnnotationError("offset_unit", f"unknown offset unit {request.offset_unit}")
    if request.kind not in KIND_NAMES:
        raise AnnotationError("kind", "say corrected, accepted or rejected")
    unit = UNITS[request.offset_unit]
    entities = []
    for i, ent in enumerate(request.entities):
        field = f"entities[{i}]"
        begin = code_points(request.text, unit, ent.begin, field)
        end = code_points(request.text, unit, ent.end, field)
        entities.append(EntitySpan(begin, end, ent.category))
    return Annotation(
        note_id=request.note_id,
        revision=request.revision,
        text=request.text,
        entities=tuple(entities),
        annotator=request.annotator,
        kind=KIND_NAMES[request.kind],
        model_version=request.model_version,
    )


class CurationServicer:
    """SubmitAnnotation, DeleteNote and GetStoreStats over one `NoteStore`."""

    def __init__(
        self,
        store: NoteStore,
        metrics: ServingMetrics,
        categories: Callable[[], tuple[str, ...] | None],
    ) -> None:
        self.store, self.metrics, self.categories = store, metrics, categories

    @_measured
    def SubmitAnnotation(  # noqa: N802 - gRPC method names
        self, request: pb.SubmitAnnotationRequest, context: grpc.ServicerContext
    ) -> pb.SubmitAnnotationResponse:
        categories = self.categories()
        if categories is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "no model is loaded yet to check categories; retry"
            )
        annotation = annotation_of(request)
        who = actor(context)
        result = self.store.submit(annotation, who, labels=categories)
        self.metrics.curation_submits.labels(result.outcome, annotation.kind).inc()
        log.info(
            "note %s revision %d from %s: %s",
            result.note_id,
            annotation.revision,
            who,
            result.outcome,
        )
        return pb.SubmitAnnotationResponse(
            outcome=OUTCOMES[result.outcome], note_id=result.note_id, revision=result.revision
        )

    @_measured
    def DeleteNote(  # noqa: N802
        self, request: pb.DeleteNoteRequest, context: grpc.ServicerContext
    ) -> pb.DeleteNoteResponse:
        who = actor(context)
        deleted = self.store.delete(request.note_id, who, request.reason)
        self.metrics.curation_deletions.labels(str(deleted).lower()).inc()
        log.info("note %s deleted by %s (stored: %s)", request.note_id, who, deleted)
        return pb.DeleteNoteResponse(deleted=deleted)

    @_measured
    def GetStoreStats(  # noqa: N802
        self, request: pb.GetStoreStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStoreStatsResponse:
        stats = self.store.stats()
        return pb.GetStoreStatsResponse(
            notes=stats.notes,
            notes_by_kind=dict(stats.by_kind),
            entities_by_category=dict(stats.entities_by_label),
            deletions=stats.deletions,
            changed_since_round=stats.changed_since_round,
            bytes_on_disk=stats.bytes_on_disk,
        )
