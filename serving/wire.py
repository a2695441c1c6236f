"""Register a servicer so that a request which does not parse is the caller's error.

The generated `add_NerServiceServicer_to_server` (and its curation twin) answers INTERNAL
("Exception deserializing request!") when request bytes do not parse, e.g. invalid UTF-8 in a
string field or a truncated message. Here each request is parsed by the servicer's side
instead: bytes that do not parse become an `Unparsable` the servicer answers with
INVALID_ARGUMENT (a stream answers that note and goes on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from serving.api import curation_pb2, ner_pb2

SERVICE = ner_pb2.DESCRIPTOR.services_by_name["NerService"]
CURATION_SERVICE = curation_pb2.DESCRIPTOR.services_by_name["CurationService"]


@dataclass(frozen=True)
class Unparsable:
    """Request bytes that are not a valid message of `type_name`."""

    type_name: str

    @property
    def message(self) -> str:
        return (
            f"the request is not a valid {self.type_name}: malformed bytes or invalid UTF-8 "
            "in a string field (text must be UTF-8)"
        )


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Unparsable]:
    def parse(data: bytes) -> Message | Unparsable:
        try:
            return cls.FromString(data)
        except DecodeError:
            return Unparsable(cls.DESCRIPTOR.full_name)

    return parse


def _handler(module: Any, method: Any, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    request = getattr(module, method.input_type.name)
    response = getattr(module, method.output_type.name)
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(method.client_streaming, method.server_streaming)]
    return make(
        behaviour,
        request_deserializer=_parser(request),
        response_serializer=response.SerializeToString,
    )


def _add(module: Any, service: Any, servicer: object, server: grpc.Server) -> None:
    """Serve every RPC of `service` (defined in `module`) from the same-named servicer method."""
    handlers = {m.name: _handler(module, m, getattr(servicer, m.name)) for m in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def add_ner_service(servicer: object, server: grpc.Server) -> None:
    """Serve `appliance.ner.v1.NerService` from `servicer`."""
    _add(ner_pb2, SERVICE, servicer, server)


def add_curation_service(servicer: object, server: grpc.Server) -> None:
    """Serve `appliance.curation.v1.CurationService` from `servicer`."""
    _add(curation_pb2, CURATION_SERVICE, servicer, server)
