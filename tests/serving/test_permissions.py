"""Per-service allow-lists of client-certificate subjects under mTLS, on a real server: every
client against every RPC, and the settings that cannot work refused before the server starts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from appliance import pki
from serving.client import NerClient
from serving.config import ServingConfig
from serving.server import NerServer
from tests.serving.servers import config_for, running

NOTE = "Cisplatin-induced nephrotoxicity was treated with magnesium."
CLIENTS = ("ehr-reader", "coder", "privacy-officer", "stranger")
CALLS: dict[str, Callable[[NerClient, str], object]] = {
    "analyze": lambda c, who: c.analyze(NOTE),
    "submit": lambda c, who: c.submit_annotation(f"p-{who}", 1, NOTE, [(0, 9, "Chemical")], who),
    "stats": lambda c, who: c.store_stats(),
    "delete": lambda c, who: c.delete_note(f"gone-{who}", "filed in error"),
}
# Who may do what: the EHR reads, the coder curates, the privacy officer deletes (and reads).
ALLOWED = {
    "ehr-reader": {"analyze"},
    "coder": {"submit", "stats"},
    "privacy-officer": {"analyze", "delete"},
    "stranger": set(),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca("test-ca", days=2)
    out = {"ca": pki.write_pair(ca, folder, "ca")[0]}
    server = pki.issue(ca, "localhost", "server", dns=["localhost"], days=1)
    out["server_cert"], out["server_key"] = pki.write_pair(server, folder, "server")
    for name in CLIENTS:
        out[f"{name}_cert"], out[f"{name}_key"] = pki.write_pair(
            pki.issue(ca, name, "client", days=1), folder, name
        )
    return out


@pytest.fixture(scope="module")
def served(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
) -> Iterator[tuple[NerServer, int]]:
    state = tmp_path_factory.mktemp("state")
    cfg = config_for(
        tiny_package,
        state_dir=state,
        note_store=state / "notes.sqlite",
        tls_cert=certs["server_cert"],
        tls_key=certs["server_key"],
        tls_client_ca=certs["ca"],
        allow_analyze=("ehr-reader", "privacy-officer"),
        allow_curate=("coder",),
        allow_delete=("privacy-officer",),
    )
    with running(cfg) as running_server:
        yield running_server


@pytest.mark.parametrize("who", CLIENTS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_each_client_may_do_what_its_allow_list_says(
    served: tuple[NerServer, int], certs: dict[str, Path], who: str, call: str
) -> None:
    # Prepare
    server, port = served
    cert, key = certs[f"{who}_cert"], certs[f"{who}_key"]
    permission = {"analyze": "analyze", "submit": "curate", "stats": "curate"}.get(call, "delete")
    denied = "appliance_permission_denied_total"
    before = server.engine.metrics.value(denied, permission=permission)
    with NerClient(f"localhost:{port}", ca=certs["ca"], cert=cert, key=key) as client:
        # Execute
        if call in ALLOWED[who]:
            CALLS[call](client, who)
            return
        with pytest.raises(grpc.RpcError) as err:
            CALLS[call](client, who)

    # Assert
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert str(err.value.details()).startswith(f"{who} may not ")
    assert server.engine.metrics.value(denied, permission=permission) == before + 1


def test_the_audit_names_the_certificate_that_wrote(
    served: tuple[NerServer, int], certs: dict[str, Path]
) -> None:
    server, port = served
    assert server.store is not None
    with NerClient(
        f"localhost:{port}", ca=certs["ca"], cert=certs["coder_cert"], key=certs["coder_key"]
    ) as client:
        client.submit_annotation("audited", 1, NOTE, [], "coder-3", kind="rejected")
    entry = next(e for e in server.store.audit() if e.note_id == "audited")
    assert (entry.actor, entry.action, entry.outcome) == ("coder", "submit", "stored")


def test_health_stays_open_to_every_client(
    served: tuple[NerServer, int], certs: dict[str, Path]
) -> None:
    _, port = served
    cert, key = certs["stranger_cert"], certs["stranger_key"]
    with NerClient(f"localhost:{port}", ca=certs["ca"], cert=cert, key=key) as client:
        client.wait_ready(10)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"allow_curate": ("coder",)}, "allow_curate: allow-lists need mTLS"),
        ({"allow_delete": (" ",)}, "allow_delete: allow-lists need mTLS"),
        (
            {"note_store": Path("n.sqlite"), "host": "0.0.0.0", "tls_cert": Path("c"),
             "tls_key": Path("k")},
            "note_store: the curation service writes training data",
        ),
    ],
)  # fmt: skip
def test_allow_lists_and_a_store_without_mtls_are_refused(
    fields: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ServingConfig(package=Path("p"), **fields)  # type: ignore[arg-type]
