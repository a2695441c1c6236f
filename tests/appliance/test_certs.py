"""`appliance certs`: a CA, server and client certificates that a real gRPC server accepts
for mTLS (and a client of another CA it refuses), `show` with expiry, clear refusals."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from appliance import pki
from appliance.cli import main
from serving.client import NerClient
from tests.serving.servers import config_for, running

NOTE = "the patient was given aspirin and developed fever"


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any, str]:
    code = main(["certs", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def _ca(capsys: pytest.CaptureFixture[str], folder: Path, name: str, days: int = 30) -> Path:
    code, shown, err = _cli(
        capsys, ["ca", "--out", str(folder), "--name", name, "--days", str(days)]
    )
    assert code == 0, err
    assert shown["subject"] == f"CN={name}" and shown["ca"] and shown["days_left"] == days - 1
    return folder


def _issue(capsys: pytest.CaptureFixture[str], ca: Path, name: str, *flags: str) -> dict[str, Any]:
    argv = ["issue", "--ca", str(ca), "--name", name, "--out", str(ca.parent / "issued"), *flags]
    code, shown, err = _cli(capsys, argv)
    assert code == 0, err
    return shown  # type: ignore[no-any-return]


def test_issued_certificates_serve_mtls_and_refuse_another_cas_client(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    ca = _ca(capsys, tmp_path / "clinic" / "ca", "Clinic CA")
    server = _issue(capsys, ca, "localhost", "--server", "--dns", "localhost", "--ip", "127.0.0.1")
    client = _issue(capsys, ca, "ehr-client", "--client", "--days", "7")
    other = _ca(capsys, tmp_path / "other" / "ca", "Other CA")
    intruder = _issue(capsys, other, "intruder", "--client")
    assert server["dns"] == ["localhost"] and server["ip"] == ["127.0.0.1"]
    assert server["usage"] == ["server"] and client["usage"] == ["client"]
    assert server["issuer"] == "CN=Clinic CA" and client["days_left"] == 6
    assert Path(client["key"]).stat().st_mode & 0o077 == 0
    assert (ca / "ca.key").stat().st_mode & 0o077 == 0
    cfg = config_for(
        tiny_package,
        state_dir=tmp_path,
        tls_cert=Path(server["cert"]),
        tls_key=Path(server["key"]),
        tls_client_ca=ca / "ca.pem",
        production=True,
    )
    trusted = (ca / "ca.pem", Path(client["cert"]), Path(client["key"]))  # ca, cert, key
    # Execute / Assert
    with running(cfg) as (_, port):
        target = f"localhost:{port}"
        with NerClient(target, *trusted) as ok:
            assert ok.analyze(NOTE).model_version
        argv = ["annotate", "--remote", target, "--text", NOTE]
        remote = [f"--{k}={v}" for k, v in zip(("ca", "cert", "key"), trusted, strict=True)]
        assert main([*argv, *remote]) == 0
        assert {e["text"] for e in json.loads(capsys.readouterr().out)} >= {"aspirin"}
        stranger = (ca / "ca.pem", Path(intruder["cert"]), Path(intruder["key"]))
        with NerClient(target, *stranger, timeout=5) as refused:
            with pytest.raises(grpc.RpcError) as err:
                refused.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong_trust = (other / "ca.pem", *trusted[1:])  # the server's CA is not this one
        with NerClient(target, *wrong_trust, timeout=5) as distrustful:
            with pytest.raises(grpc.RpcError) as err:
                distrustful.analyze(NOTE)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_show_reports_subject_sans_and_expiry(tmp_path: Path, capsys) -> None:
    ca = _ca(capsys, tmp_path / "ca", "Clinic CA", days=60)
    issued = _issue(capsys, ca, "serving-a", "--dns", "a.example", "b.example", "--days", "10")
    code, shown, err = _cli(capsys, ["show", issued["cert"]])
    assert code == 0, err
    assert shown["subject"] == "CN=serving-a" and shown["issuer"] == "CN=Clinic CA"
    assert shown["dns"] == ["a.example", "b.example"] and shown["usage"] == ["server", "client"]
    assert shown["days_left"] == 9 and not shown["expired"] and not shown["ca"]
    not_after = dt.datetime.fromisoformat(shown["not_after"])
    assert abs(not_after - dt.datetime.now(dt.UTC) - dt.timedelta(days=10)) < dt.timedelta(
        minutes=1
    )
    later = pki.describe(pki.read_cert(Path(issued["cert"])), now=not_after + dt.timedelta(days=2))
    assert later["expired"] and later["days_left"] == -2


def test_bad_requests_are_refused_and_overwrite_nothing(tmp_path: Path, capsys) -> None:
    ca = _ca(capsys, tmp_path / "ca", "Clinic CA")
    before = (ca / "ca.key").read_bytes()
    out = str(tmp_path / "issued")
    refusals = {
        ("ca", "--out", str(ca)): "ca.pem: exists; refusing to overwrite a CA",
        ("issue", "--ca", str(ca), "--name", "s", "--out", out, "--server"): "needs at least one",
        ("issue", "--ca", str(ca), "--name", "c", "--out", out, "--days", "400"): "outlive its CA",
        ("issue", "--ca", str(ca), "--name", "c", "--out", out, "--ip", "10.0.0"): "not an IPv4",
        ("issue", "--ca", str(ca), "--name", "../c", "--out", out): "it names the files",
        ("issue", "--ca", str(tmp_path), "--name", "c", "--out", out): "cannot read",
        ("show", str(ca / "ca.key")): "not a PEM certificate",
        ("issue", "--ca", str(ca), "--name", "c", "--out", out, "--days", "0"): "must be >= 1",
    }
    for argv, message in refusals.items():
        code, _, err = _cli(capsys, list(argv))
        assert code == 2 and message in err, (argv, err)
    assert (ca / "ca.key").read_bytes() == before
    assert not (tmp_path / "issued").exists()
    _issue(capsys, ca, "c", "--client")
    code, _, err = _cli(capsys, ["issue", "--ca", str(ca), "--name", "c", "--out", out])
    assert code == 2 and "c.pem: exists; refusing to overwrite it" in err
