"""The `appliance.ner.v1.NerService` servicer: thin, it validates via the engine and maps errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from serving.api import ner_pb2, ner_pb2_grpc
from serving.engine import Engine, NoteRequest
from serving.rpc import RequestError, measured
from serving.wire import Unparsable

log = logging.getLogger(__name__)


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


_measured = measured(
    lambda s: (
        s.engine.metrics.requests,
        s.engine.metrics.request_seconds,
        s.engine.metrics.in_flight,
    )
)


def _result(answer: ner_pb2.AnalyzeResponse | RequestError, note_id: str) -> ner_pb2.NoteResult:
    if isinstance(answer, RequestError):
        return ner_pb2.NoteResult(
            code=answer.code.value[0], message=answer.message, note_id=note_id
        )
    return ner_pb2.NoteResult(code=0, response=answer, note_id=note_id)


class NerServicer(ner_pb2_grpc.NerServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @_measured
    def Analyze(  # noqa: N802 - gRPC method names
        self, request: ner_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> ner_pb2.AnalyzeResponse:
        (answer,) = self.engine.analyze([NoteRequest.from_proto(request)], _deadline(context))
        if isinstance(answer, RequestError):
            raise answer
        return answer

    @_measured
    def AnalyzeBatch(  # noqa: N802
        self, request: ner_pb2.AnalyzeBatchRequest, context: grpc.ServicerContext
    ) -> ner_pb2.AnalyzeBatchResponse:
        self.engine.check_batch_size(len(request.notes))
        notes = [NoteRequest.from_proto(n) for n in request.notes]
        answers = self.engine.analyze(notes, _deadline(context))
        return ner_pb2.AnalyzeBatchResponse(
            results=[_result(a, n.note_id) for a, n in zip(answers, notes, strict=True)]
        )

    def AnalyzeStream(  # noqa: N802
        self, request_iterator: Iterator[ner_pb2.AnalyzeRequest], context: grpc.ServicerContext
    ) -> Iterator[ner_pb2.NoteResult]:
        # Per note, not per stream: a bad note gets its status and the back-fill goes on.
        for request in request_iterator:
            note_id = "" if isinstance(request, Unparsable) else request.note_id
            answer = self._one_of_stream(request, context)
            code = answer.code.name if isinstance(answer, RequestError) else "OK"
            self.engine.metrics.requests.labels("AnalyzeStream", code).inc()
            yield _result(answer, note_id)

    def _one_of_stream(
        self, request: ner_pb2.AnalyzeRequest | Unparsable, context: grpc.ServicerContext
    ) -> ner_pb2.AnalyzeResponse | RequestError:
        if isinstance(request, Unparsable):
            return RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            (answer,) = self.engine.analyze([NoteRequest.from_proto(request)], _deadline(context))
        except RequestError as err:
            return err
        return answer

    @_measured
    def GetInfo(  # noqa: N802
        self, request: ner_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> ner_pb2.InfoResponse:
        model = self.engine.serving_model()
        cfg = self.engine.config
        meta = model.backend.meta
        return ner_pb2.InfoResponse(
            model_id=str(meta.get("base", {}).get("spec", "")),
            model_version=model.version,
            fingerprint=model.fingerprint,
            backend=model.backend.name,
            quantization=model.backend.quantization,
            categories=model.categories,
            labels=model.backend.labels,
            limits=ner_pb2.Limits(
                max_note_chars=cfg.max_note_chars,
                max_batch_notes=cfg.max_batch_notes,
                max_queue=cfg.max_queue,
                token_budget=cfg.token_budget,
                max_queue_delay_ms=cfg.max_queue_delay_ms,
                max_request_tokens=cfg.max_request_tokens,
                max_queue_tokens=cfg.max_queue_tokens,
            ),
        )
