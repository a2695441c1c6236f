"""The hospital's Flower ClientApp: train the travelling part locally, evaluate, promote.

Per-node values come from the SuperNode's `--node-config` (see `daemon_config.NODE_KEYS`);
the run config converts once (`config.from_run_config`). What leaves the node is only the
(compressed) parameter tensors of the travelling part and scalar metrics.

Evaluating scores the round's global model and changes nothing. Promotion into the node's
registry is a step of its own (`HospitalClient.promote`), taken only when the server's evaluate
instruction asks for it (`promote`, sent by `strategy.ConsortiumStrategy`) and the node has a
registry and held-out notes.

A node with a registry loads, trains, evaluates and promotes inside the box's work turn
(`appliance.work_turn`), so serving's ONNX export of a promoted version never runs beside them.
It waits up to half the round's timeout for serving to finish an export, then declines the
round (or scores nothing) and says why.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app.message_type import MessageType
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from appliance.work_turn import TurnBusy, work_turn
from federation.audit import audit_mod
from federation.config import FederationConfig, from_run_config
from federation.daemon_config import node_privacy
from federation.journal import RoundJournal
from federation.notes_source import NodeNotes, mark_trained, read_node_notes, too_few_new

if TYPE_CHECKING:  # torch and transformers load only when a message reaches the client
    from federation.task import HospitalNode

log = logging.getLogger(__name__)
_NODES: dict[str, HospitalNode] = {}  # one per (node config, run config) for the process
_NOTES: dict[str, NodeNotes] = {}  # the notes each of them was loaded with


def hospital_node(cfg: FederationConfig, node_config: dict[str, Any]) -> HospitalNode:
    """The process's node for this run. Imported here, not at the top: Flower starts a process
    per message, and SecAgg+'s key-exchange stages never reach the client, so they need not pay
    the seconds torch and transformers take to import."""
    from federation.task import HospitalNode

    key = _node_key(cfg, node_config)
    if key not in _NODES:
        notes = node_notes(cfg, node_config)
        state = Path(str(node_config.get("state-dir", Path(tempfile.gettempdir()) / "node")))
        name = str(node_config.get("hospital", "hospital"))
        bases = node_config.get("bases-dir")  # a GGUF base shared by the box's processes
        _NODES[key] = HospitalNode.load(
            cfg, notes.train, state, name, notes.heldout, Path(str(bases)) if bases else None
        )
    return _NODES[key]


def node_notes(cfg: FederationConfig, node_config: dict[str, Any]) -> NodeNotes:
    """The notes the process's node for this run trains and scores on, read once."""
    key = _node_key(cfg, node_config)
    if key not in _NOTES:
        _NOTES[key] = read_node_notes(node_config)
    return _NOTES[key]


def _node_key(cfg: FederationConfig, node_config: dict[str, Any]) -> str:
    return json.dumps([sorted(node_config.items()), repr(cfg)], default=str)


def forget_node(cfg: FederationConfig, node_config: dict[str, Any]) -> None:
    """Forget the notes read for this run and free its node, if one was loaded."""
    key = _node_key(cfg, node_config)
    _NOTES.pop(key, None)
    node = _NODES.get(key)
    if node is not None:
        release_node(node)


def release_node(node: HospitalNode) -> None:
    """Free `node`'s model and forget the node: a later message of this process loads it anew."""
    for key in [k for k, v in _NODES.items() if v is node]:
        del _NODES[key]
        _NOTES.pop(key, None)
    node.release_model()


class HospitalClient(NumPyClient):
    """One message's client; `load` gives the node, loaded at its first use (in the turn)."""

    def __init__(
        self,
        cfg: FederationConfig,
        node_config: dict[str, Any],
        load: Callable[[], HospitalNode],
        refusal: str | None = None,
    ) -> None:
        """`refusal`: why this hospital's policy declines every round of the run (None: it
        trains; `daemon_config.node_privacy`)."""
        self.cfg, self.node_config, self._load, self.refusal = cfg, node_config, load, refusal
        self.name = str(node_config.get("hospital", "hospital"))
        journal = node_config.get("journal")
        self.journal = RoundJournal(str(journal)) if journal else None

    @property
    def node(self) -> HospitalNode:
        return self._load()

    def _record(self, event: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.record(event, node=self.name, **fields)

    def _turn(self, job: str) -> AbstractContextManager[None]:
        """The box's work turn for `job`, when the node has a registry serving follows."""
        registry = self.node_config.get("registry")
        if not registry:
            return nullcontext()
        Path(str(registry)).mkdir(parents=True, exist_ok=True)
        return work_turn(Path(str(registry)), f"{self.name}'s {job}", self.cfg.round_timeout_s / 2)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        arrays = self.node.initial_arrays()
        return [arrays[n] for n in self.node.names]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):  # type: ignore[override]
        server_round = int(config.get("server-round", 0))
        self._record("round_started", server_round=server_round)
        notes, why = None, self.refusal
        if why is None and "note-store" in self.node_config:
            notes = node_notes(self.cfg, self.node_config)
            why = too_few_new(self.node_config, notes)
        started = time.time()
        try:
            if why is None:
                with self._turn(f"training in round {server_round}"):
                    fitted = self._fit(parameters, server_round, config)
        except TurnBusy as err:
            why = str(err)
        if notes is not None and why is None and "declined" not in fitted[2]:
            mark_trained(self.node_config, notes, self.node.state_dir, started)
        if notes is not None:  # the next message reads the store anew
            forget_node(self.cfg, self.node_config)
        if why is not None:
            self._record("round_declined", server_round=server_round, reason=why[:200])
            return parameters, 0, {"declined": why[:200]}
        return fitted

    def _fit(
        self, parameters: list[np.ndarray], server_round: int, config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        arrays = dict(zip(self.node.names, parameters, strict=True))
        update = self.node.train_round(
            arrays,
            server_round,
            {"proximal_mu": config.get("proximal-mu", self.node.cfg.proximal_mu)},
        )
        metrics = {k: v for k, v in update.metrics.items() if k != "reason"}
        if update.declined:
            self._record(
                "round_declined",
                server_round=server_round,
                reason=update.declined[:200],
                **_eps(metrics),
            )
            # Same shapes as the global weights (SecAgg+ needs them), zero weight.
            return parameters, 0, {**metrics, "declined": update.declined[:200]}
        self._record(
            "round_completed",
            server_round=server_round,
            num_examples=update.num_examples,
            **{k: v for k, v in metrics.items() if k in _JOURNALED},
        )
        names = list(update.payload)
        if self.node.cfg.compression == "none":
            names = list(self.node.names)
        metrics["payload-names"] = json.dumps(names)
        return [update.payload[n] for n in names], update.num_examples, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]):  # type: ignore[override]
        """Score the global model on the held-out notes; then, if asked, the promotion step."""
        server_round = int(config.get("server-round", 0))
        try:
            with self._turn(f"evaluation in round {server_round}"):
                arrays = dict(zip(self.node.names, parameters, strict=True))
                count, metrics = self.node.evaluate(arrays)
                if bool(config.get("promote", False)) and count and self.registry is not None:
                    self.promote(arrays, server_round, metrics.get("f1"))
        except TurnBusy as err:
            log.warning("round %d: %s scored nothing: %s", server_round, self.name, err)
            return 1.0, 0, {"declined": str(err)[:200]}
        return 1.0 - metrics.get("f1", 0.0), count, metrics

    @property
    def registry(self) -> Path | None:
        """The node's registry, when it has one and its task is served (only NER is)."""
        registry = self.node_config.get("registry")
        if not registry or self.cfg.task != "ner":
            return None
        return Path(str(registry))

    def promote(
        self, arrays: dict[str, np.ndarray], server_round: int, f1: float | None = None
    ) -> None:
        """Package `arrays`, publish it into the registry, move `current` if it is not worse;
        `f1`: the held-out F1 of `arrays` just measured, so the package is not scored again."""
        from federation.promotion import promote_if_not_worse

        registry, node = self.registry, self.node
        if registry is None:
            raise ValueError(f"node {node.name} has no registry for a {node.cfg.task} model")
        tolerance = float(self.node_config.get("tolerance", 0.01))
        quantization = node.loaded.config.quantization
        with tempfile.TemporaryDirectory(dir=node.state_dir) as tmp:
            candidate = node.write_package(arrays, Path(tmp) / "package")
            # The message's last use of the node's model: the packages load into its memory.
            release_node(node)
            promote_if_not_worse(
                registry,
                candidate,
                node.heldout,
                tolerance,
                node.bases_dir,
                quantization=quantization,
                label=f"round-{server_round}",
                journal=self.journal,
                server_round=server_round,
                candidate_f1=f1,
            )


_JOURNALED = (
    "loss",
    "bytes_sent",
    "bytes_received",
    "eps_spent",
    "eps_remaining",
    "dp_noise",
    "dp_clipped_share",
    "dp_median_grad_norm",
)


def _eps(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("eps_spent", "eps_remaining") if k in metrics}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    node_config = dict(context.node_config)
    cfg, refusal = node_privacy(from_run_config(context.run_config), node_config)
    load = lambda: hospital_node(cfg, node_config)  # noqa: E731
    return HospitalClient(cfg, node_config, load, refusal).to_client()


def optional_secaggplus(msg: Message, ctxt: Context, call_next):  # type: ignore[no-untyped-def]
    """SecAgg+ when the server runs its workflow (train messages carry its configs)."""
    if msg.metadata.message_type == MessageType.TRAIN and (
        RECORD_KEY_CONFIGS in msg.content.config_records
    ):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def optional_client_clipping(msg: Message, ctxt: Context, call_next):  # type: ignore[no-untyped-def]
    """Flower's client-side fixed clipping when the run asks for client-level DP."""
    if str(ctxt.run_config.get("client-dp", "none")) == "client-fixed":
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


# Outermost first: the audit sees what leaves, after SecAgg+ masking and DP clipping.
app = ClientApp(
    client_fn=client_fn, mods=[audit_mod, optional_secaggplus, optional_client_clipping]
)
