"""`create_server`: the gRPC server with health, reflection, metrics, model loading and drain."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from appliance.note_store import NoteStore, StoreError
from serving.api import curation_pb2, ner_pb2
from serving.authz import Permissions
from serving.config import ServingConfig
from serving.curation import CurationServicer
from serving.engine import Engine, load_served_model
from serving.metrics import ServingMetrics
from serving.servicer import NerServicer
from serving.tls import server_credentials
from serving.watcher import ModelWatcher
from serving.wire import add_curation_service, add_ner_service

log = logging.getLogger(__name__)
SERVICE = ner_pb2.DESCRIPTOR.services_by_name["NerService"].full_name
CURATION = curation_pb2.DESCRIPTOR.services_by_name["CurationService"].full_name


class NerServer:
    """A running endpoint: start() loads the model in the background, stop() drains."""

    def __init__(self, config: ServingConfig, grpc_server: grpc.Server, engine: Engine) -> None:
        self.config = config
        self.grpc = grpc_server
        self.engine = engine
        self.health = health.HealthServicer()
        self.metrics_server: WSGIServer | None = None
        self.store: NoteStore | None = None  # the note store the curation service writes
        self.watcher = (
            ModelWatcher(engine, config.registry, config.watch_interval_s)
            if config.registry
            else None
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_server is None else int(self.metrics_server.server_port)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE):
            self.health.set(name, status)

    def start(self) -> None:
        if self.config.metrics_port is not None:
            self.metrics_server = self.engine.metrics.serve(
                self.config.metrics_host, self.config.metrics_port
            )
        self.grpc.start()
        self._loader.start()

    def _load(self) -> None:
        if self.watcher is not None:
            self.watcher.check_once()
            self.watcher.start()
        elif self.config.package is not None:
            try:
                model = load_served_model(self.config, self.config.package, "fixed")
            except Exception as err:  # noqa: BLE001 - reported; health stays NOT_SERVING
                self.engine.metrics.swap_failures.inc()
                log.error("cannot serve %s: %s: %s", self.config.package, type(err).__name__, err)
                return
            self.engine.install(model)
        self._wait_and_serve()

    def _wait_and_serve(self) -> None:
        while self.engine.model is None and self.engine.accepting:
            time.sleep(0.05)  # a registry without `current` yet: stay NOT_SERVING until one lands
        if self.engine.accepting:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def wait_ready(self, timeout: float) -> bool:
        until = time.monotonic() + timeout
        while self.engine.model is None and time.monotonic() < until:
            time.sleep(0.02)
        return self.engine.model is not None

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new work, let in-flight requests finish, then stop."""
        grace = self.config.drain_grace_s if grace is None else grace
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.engine.accepting = False
        until = time.monotonic() + grace
        while self.engine.metrics.value("appliance_ner_in_flight") > 0 and time.monotonic() < until:
            time.sleep(0.02)
        self.grpc.stop(max(0.0, until - time.monotonic())).wait()
        if self.watcher is not None:
            self.watcher.stop()
        self.engine.stop()
        if self.store is not None:
            self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


def create_server(config: ServingConfig) -> tuple[NerServer, int]:
    """Build (not start) the server; the port is the bound one (config.port 0: any free port)."""
    metrics = ServingMetrics()
    engine = Engine(config, metrics)
    interceptors = []
    if config.mtls:
        allow = {
            "analyze": config.allow_analyze,
            "curate": config.allow_curate,
            "delete": config.allow_delete,
        }
        interceptors.append(Permissions(allow, lambda p: metrics.permission_denied.labels(p).inc()))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ner-rpc"),
        maximum_concurrent_rpcs=config.workers + config.max_queue,
        interceptors=interceptors,
    )
    add_ner_service(NerServicer(engine), server)
    app = NerServer(config, server, engine)
    services = [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if config.note_store is not None:
        app.store = _curation(config, engine, server)
        services.append(CURATION)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable_server_reflection(tuple(services), server)
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise ValueError(f"host/port: cannot bind {address}")
    return app, port


def _curation(config: ServingConfig, engine: Engine, server: grpc.Server) -> NoteStore:
    """Open the note store and serve the curation service over it."""
    assert config.note_store is not None
    try:
        store = NoteStore(config.note_store, max_note_chars=config.max_note_chars)
    except StoreError as err:
        raise ValueError(f"note_store: {err}") from err

    def categories() -> tuple[str, ...] | None:
        model = engine.model
        return None if model is None else model.categories

    add_curation_service(CurationServicer(store, engine.metrics, categories), server)
    engine.metrics.watch_store(store.stats)
    return store
