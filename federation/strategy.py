"""The consortium's Flower strategy: FedAvg or FedProx over the travelling part, with checks.

Built on Flower's `FedAvg` (the legacy Strategy API, which SecAgg+ and the client-side DP
wrappers work with). Each update is decoded and checked a tensor at a time
(`updates.check_payload`); a bad one is dropped and logged with its node, a declined one
(privacy budget) is reported, and the round goes on with the rest. Under SecAgg+ the server
only ever sees the weighted sum, so per-node checks are impossible there: SecAgg+'s clipping
range bounds what any one node can contribute instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from federation.compression import wire_bytes
from federation.config import FederationConfig
from federation.updates import Received, aggregate_round, downlink

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


class ConsortiumStrategy(FedAvg):
    """FedAvg/FedProx on named tensors, minimum nodes, sampling fraction, update checks."""

    def __init__(self, cfg: FederationConfig, names: list[str], initial: Arrays) -> None:
        super().__init__(
            fraction_fit=cfg.fraction_train,
            fraction_evaluate=1.0,
            min_fit_clients=cfg.min_nodes,
            min_evaluate_clients=cfg.min_nodes,
            min_available_clients=cfg.min_nodes,
            initial_parameters=ndarrays_to_parameters([initial[n] for n in names]),
            accept_failures=True,
        )
        self.cfg, self.names = cfg, names
        self.global_arrays = {n: np.asarray(initial[n], np.float32) for n in names}
        self.history: list[dict[str, Any]] = []

    def _config(self, server_round: int) -> dict[str, Scalar]:
        config: dict[str, Scalar] = {"server-round": server_round}
        if self.cfg.strategy == "fedprox":
            config["proximal-mu"] = self.cfg.proximal_mu
        return config

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        pairs = super().configure_fit(server_round, parameters, client_manager)
        sent = downlink(self.global_arrays, self.cfg.compression)
        down = ndarrays_to_parameters([sent[n] for n in self.names])
        for _, fit_ins in pairs:
            fit_ins.parameters = down
            fit_ins.config.update(self._config(server_round))
        self.down_bytes = wire_bytes(sent)
        return pairs

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        pairs = super().configure_evaluate(server_round, parameters, client_manager)
        for _, ins in pairs:
            ins.config.update(self._config(server_round))
            # After scoring, each node offers the round's model to its registry (a step of its
            # own there: `client_app.HospitalClient.promote`).
            ins.config["promote"] = True
        return pairs

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        for failure in failures:
            log.warning(
                "round %d: a node failed or timed out (%s)",
                server_round,
                type(failure).__name__ if isinstance(failure, BaseException) else "reply",
            )
        if not results:
            return None, {"accepted": 0, "failures": len(failures)}
        if self.cfg.secagg:
            merged = parameters_to_ndarrays(results[0][1].parameters)
            new = {n: np.asarray(a, np.float32) for n, a in zip(self.names, merged, strict=True)}
            metrics: dict[str, Scalar] = {"accepted": len(results), "secagg": True}
        else:
            new, metrics = self._aggregate_plain(server_round, results)
        self.global_arrays = new
        metrics["failures"] = len(failures)
        self.history.append({"round": server_round, **metrics})
        return ndarrays_to_parameters([new[n] for n in self.names]), metrics

    def _aggregate_plain(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[Arrays, dict[str, Scalar]]:
        replies = []
        up = 0
        for proxy, res in results:
            declined = str(res.metrics.get("declined", "")) or None
            try:
                names = json.loads(str(res.metrics.get("payload-names", "[]")))
                payload = dict(zip(names, parameters_to_ndarrays(res.parameters), strict=True))
            except (ValueError, TypeError) as err:
                names, payload = [], {"unreadable": np.zeros(1)}
                log.warning("node %s sent an unreadable update: %s", proxy.node_id, err)
            up += sum(len(t) for t in res.parameters.tensors)
            replies.append((str(proxy.node_id), payload, res.num_examples, declined))
        reference = Received(self.global_arrays, self.cfg.compression)
        new, outcome = aggregate_round(reference, replies, self.cfg.update_norm_bound)
        for node, problems in outcome.rejected.items():
            log.warning("round %d: rejected node %s: %s", server_round, node, "; ".join(problems))
        for node, reason in outcome.declined.items():
            log.info("round %d: node %s declined: %s", server_round, node, reason)
        metrics: dict[str, Scalar] = {
            "accepted": len(outcome.accepted),
            "rejected": len(outcome.rejected),
            "declined": len(outcome.declined),
            "examples": outcome.examples,
            "bytes-up": up,
            "bytes-down-per-node": getattr(self, "down_bytes", 0),
        }
        return new, metrics

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        total = sum(r.num_examples for _, r in results)
        if not total:
            return None, {}
        f1 = sum(float(r.metrics.get("f1", 0.0)) * r.num_examples for _, r in results) / total
        log.info("round %d: held-out F1 across hospitals %.4f", server_round, f1)
        if self.history and self.history[-1]["round"] == server_round:
            self.history[-1]["heldout-f1"] = f1
        return 1.0 - f1, {"f1": f1}
