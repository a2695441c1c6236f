"""Health transitions, hot swap under load, a refused version, and mTLS, on real servers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from appliance.registry import ModelRegistry
from serving.client import NerClient
from serving.server import SERVICE
from tests.serving.servers import config_for, make_pki, publish, running

NOTE = "the patient was given aspirin and developed fever"
Status = health_pb2.HealthCheckResponse
FAILED = "appliance_ner_model_swap_failures_total"


def _watch(port: int, seen: list[int], stop: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for answer in stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE)):
                seen.append(answer.status)
                if stop.is_set() and answer.status == Status.NOT_SERVING:
                    return
        except grpc.RpcError:
            return  # the server went away after draining


def test_health_loading_serving_draining(tiny_package: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    cfg = config_for(registry=registry.root, state_dir=tmp_path, watch_interval_s=0.05)
    seen: list[int] = []
    stopping = threading.Event()
    with running(cfg, ready=False) as (server, port):
        watcher = threading.Thread(target=_watch, args=(port, seen, stopping))
        watcher.start()
        with NerClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(grpc.RpcError) as err:
                client.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading a model" in err.value.details()
            version = publish(registry, tiny_package, "first")
            assert server.wait_ready(60)
            time.sleep(0.3)
            assert client.analyze(NOTE).model_version == version
            server.engine.accepting = False  # what stop() does first: new work is refused
            with pytest.raises(grpc.RpcError) as err:
                client.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in err.value.details()
            stopping.set()
    watcher.join(timeout=10)
    assert seen == [Status.NOT_SERVING, Status.SERVING, Status.NOT_SERVING]


def test_swap_under_load_fails_no_request(tiny_package: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    first = publish(registry, tiny_package, "first")
    cfg = config_for(registry=registry.root, state_dir=tmp_path, watch_interval_s=0.05)
    versions: list[str] = []
    failures: list[str] = []
    done = threading.Event()
    with running(cfg) as (server, port), NerClient(f"127.0.0.1:{port}") as client:

        def load() -> None:
            while not done.is_set():
                try:
                    response = client.analyze(NOTE)
                    assert response.entities
                    versions.append(response.model_version)
                except (grpc.RpcError, AssertionError) as err:
                    failures.append(repr(err))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        second = publish(registry, tiny_package, "second")
        until = time.monotonic() + 30
        while second not in versions[-4:] and time.monotonic() < until:
            time.sleep(0.05)
        time.sleep(0.3)
        broken = registry.allocate("broken")
        broken.path.mkdir(parents=True)
        (broken.path / "package.json").write_text("{not json")
        registry.promote(broken.version, "test")
        until = time.monotonic() + 30
        while server.engine.metrics.value(FAILED) < 1 and time.monotonic() < until:
            time.sleep(0.05)
        time.sleep(0.3)
        done.set()
        for t in threads:
            t.join()
        assert client.analyze(NOTE).model_version == second  # the old one kept serving
    assert failures == []
    assert versions[0] == first and versions[-1] == second and first != second
    assert (
        server.engine.metrics.value("appliance_ner_model_swaps_total") == 2
    )  # first load + the swap
    assert server.engine.metrics.value(FAILED) == 1
    assert server.watcher is not None and server.watcher.failed == {broken.version}


def test_mtls_refuses_a_client_without_certificate(tiny_package: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cfg = config_for(
        tiny_package,
        state_dir=tmp_path,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        production=True,
    )
    with running(cfg) as (_, port):
        target = f"localhost:{port}"
        with NerClient(target, ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"]) as ok:
            assert ok.analyze(NOTE).entities
        with NerClient(target, ca=pki["ca"], timeout=5) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with NerClient(target, timeout=5) as plaintext:
            with pytest.raises(grpc.RpcError) as err:
                plaintext.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
