"""The `appliance.ner.v1.NerService` servicer: thin, it validates via the engine and maps errors."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from serving.api import ner_pb2, ner_pb2_grpc
from serving.engine import Engine, NoteRequest, RequestError
from serving.wire import Unparsable

log = logging.getLogger(__name__)
T = TypeVar("T")


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _measured(method: Callable[..., T]) -> Callable[..., T]:
    """Count the RPC by status code, time it, and turn RequestError into a clean abort."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: NerServicer, request: Any, context: grpc.ServicerContext) -> T:
        metrics = self.engine.metrics
        metrics.in_flight.inc()
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Unparsable):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return method(self, request, context)
        except RequestError as err:
            code = err.code
            log.info("%s refused: %s", name, err.code.name)
            context.abort(err.code, err.message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)  # the traceback stays in the log, not the reply
            context.abort(code, "internal error; see the server log")
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(name, code.name).inc()
            metrics.request_seconds.labels(name).observe(time.monotonic() - started)
        raise AssertionError("unreachable: abort raises")

    return wrapper


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
