"""One rule for every RPC the server answers.

A request that does not parse is the caller's error (INVALID_ARGUMENT); a `RequestError` is
answered with its status and message; any other failure is INTERNAL, its details left in the
server log and never sent to the client. Every call is counted by method and status code and
timed, on the metrics the servicer names.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter, Gauge, Histogram

from serving.wire import Unparsable

log = logging.getLogger(__name__)
T = TypeVar("T")
Counted = tuple[Counter, Histogram, Gauge | None]  # calls by method and code, seconds, in flight


class RequestError(Exception):
    """A request the server refuses: a gRPC status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def measured(
    counted: Callable[[Any], Counted],
    refusal: Callable[[Exception], RequestError | None] | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a servicer method: `counted(servicer)` gives its metrics; `refusal(err)` turns
    an error of the method's own domain into the status it means (None: it is a fault)."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
            requests, seconds, in_flight = counted(self)
            if in_flight is not None:
                in_flight.inc()
            started, code = time.monotonic(), grpc.StatusCode.OK
            try:
                return _call(method, self, request, context, refusal)
            except RequestError as err:
                code = err.code
                log.info("%s refused: %s", name, err.code.name)
                context.abort(err.code, err.message)
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", name)  # the traceback stays in the log
                context.abort(code, "internal error; see the server log")
            finally:
                if in_flight is not None:
                    in_flight.dec()
                requests.labels(name, code.name).inc()
                seconds.labels(name).observe(time.monotonic() - started)
            raise AssertionError("unreachable: abort raises")

        return wrapper

    return decorate


def _call(
    method: Callable[..., T],
    servicer: Any,
    request: Any,
    context: grpc.ServicerContext,
    refusal: Callable[[Exception], RequestError | None] | None,
) -> T:
    if isinstance(request, Unparsable):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    try:
        return method(servicer, request, context)
    except RequestError:
        raise
    except Exception as err:
        mapped = refusal(err) if refusal is not None else None
        if mapped is None:
            raise
        raise mapped from err
