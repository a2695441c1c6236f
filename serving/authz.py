"""Who may call what: per-service allow-lists of client-certificate subjects, under mTLS.

Three permissions, each for its RPCs:
- `analyze`: every RPC of `appliance.ner.v1.NerService`;
- `curate`: `SubmitAnnotation` and `GetStoreStats` of `appliance.curation.v1.CurationService`;
- `delete`: its `DeleteNote`.
An allow-list entry matches a client certificate's common name or its whole subject as gRPC
reports it (e.g. `ehr-gateway` or `CN=ehr-gateway,O=St Example`). An empty `analyze` list lets
every client the CA signed analyze notes; empty `curate` and `delete` lists let nobody (write
access is granted, never assumed). Health and reflection stay open. A refused call gets
PERMISSION_DENIED naming the permission, and is counted; its arguments are never read.

Without mTLS (plaintext or TLS on loopback only, see `ServingConfig`) there are no subjects: the
interceptor is not installed and every caller on the box is trusted, as `local`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

log = logging.getLogger(__name__)
NER = "/appliance.ner.v1.NerService/"
CURATION = "/appliance.curation.v1.CurationService/"
LOCAL = "local"  # the actor recorded for a caller without a certificate (loopback only)
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def permission_of(method: str) -> str | None:
    """The permission a full method name needs; None for open services."""
    if method.startswith(NER):
        return "analyze"
    if method == CURATION + "DeleteNote":
        return "delete"
    if method.startswith(CURATION):
        return "curate"
    return None


def client_subjects(context: grpc.ServicerContext) -> tuple[str, ...]:
    """The peer certificate's common name(s) and subject, as gRPC's auth context gives them."""
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject", ())]
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def actor(context: grpc.ServicerContext) -> str:
    """Who is calling, for the audit log: the certificate's common name, else `local`."""
    subjects = client_subjects(context)
    return subjects[0] if subjects else LOCAL


class Permissions(grpc.ServerInterceptor):
    """Refuses calls whose client certificate is not on the method's allow-list."""

    def __init__(self, allow: Mapping[str, Sequence[str]], denied: Callable[[str], None]) -> None:
        self.allow = {name: frozenset(subjects) for name, subjects in allow.items()}
        self.denied = denied  # counts a refusal, by permission

    def allowed(self, permission: str, subjects: Sequence[str]) -> bool:
        listed = self.allow.get(permission, frozenset())
        if permission == "analyze" and not listed:
            return bool(subjects)  # mTLS already checked the CA
        return any(s in listed for s in subjects)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        permission = permission_of(handler_call_details.method)
        if handler is None or permission is None:
            return handler
        return _guarded(handler, lambda context: self._check(permission, context))

    def _check(self, permission: str, context: grpc.ServicerContext) -> None:
        subjects = client_subjects(context)
        if self.allowed(permission, subjects):
            return
        self.denied(permission)
        who = subjects[0] if subjects else "a client without a certificate"
        log.warning("permission %s refused to %s", permission, who)
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{who} may not {permission}: its certificate subject is not in allow_{permission}",
        )


def _guarded(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    """`handler` with `check(context)` run before its behaviour."""
    for attr, make in _KINDS:
        behaviour = getattr(handler, attr)
        if behaviour is None:
            continue

        def guarded(request: Any, context: grpc.ServicerContext, _run: Any = behaviour) -> Any:
            check(context)
            return _run(request, context)

        return make(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
