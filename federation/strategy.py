"""The consortium's Flower strategy: FedAvg or FedProx over the travelling part, with checks.

Built on Flower's `FedAvg` (the legacy Strategy API, which SecAgg+ and the client-side DP
wrappers work with). The global model exists once, as Flower keeps it between rounds, in the form
the nodes receive (`updates.downlink`: fp16 when updates are compressed): the nodes' deltas are
taken against exactly those weights, so a float32 copy beside it would add memory and nothing
else, and what a wrapper does to it (the server-side DP noise) reaches the nodes. Each update is
read from its message, decoded and checked a tensor at a time (`updates.check_payload`); a bad
one is dropped and logged with its node, a declined one (privacy budget) is reported, and the
round goes on with the rest. Under SecAgg+ the server
only ever sees the weighted sum, so per-node checks are impossible there: SecAgg+'s clipping
range bounds what any one node can contribute instead.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    ndarray_to_bytes,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from federation.compression import wire_bytes
from federation.config import FederationConfig
from federation.updates import aggregate_round, sent_dtype

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


class ParametersView(Mapping[str, np.ndarray]):
    """Named tensors of a Flower `Parameters`, each read from its bytes when asked for: an update
    or the global model is never held twice, as bytes and as arrays."""

    def __init__(self, names: list[str], parameters: Parameters) -> None:
        if len(names) != len(parameters.tensors):
            raise ValueError(f"{len(parameters.tensors)} tensors for {len(names)} names")
        self._index = {name: i for i, name in enumerate(names)}
        self._tensors = parameters.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return bytes_to_ndarray(self._tensors[self._index[name]])

    def dtype(self, name: str) -> np.dtype:
        """A tensor's dtype, from its header alone."""
        stream = io.BytesIO(self._tensors[self._index[name]])
        if np.lib.format.read_magic(stream) == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)[2]
        return np.lib.format.read_array_header_2_0(stream)[2]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def to_parameters(arrays: Iterable[np.ndarray], dtype: Any) -> Parameters:
    """Serialize `arrays` as `dtype`, one at a time (a generator that drops each array as it goes
    never holds the model in both forms)."""
    tensors = [ndarray_to_bytes(np.asarray(a, dtype)) for a in arrays]
    return Parameters(tensors=tensors, tensor_type="numpy.ndarray")


class ConsortiumStrategy(FedAvg):
    """FedAvg/FedProx on named tensors, minimum nodes, sampling fraction, update checks."""

    def __init__(self, cfg: FederationConfig, names: list[str], initial: Arrays) -> None:
        self.cfg, self.names = cfg, names
        self.dtype = sent_dtype(cfg.compression)
        super().__init__(
            fraction_fit=cfg.fraction_train,
            fraction_evaluate=1.0,
            min_fit_clients=cfg.min_nodes,
            min_evaluate_clients=cfg.min_nodes,
            min_available_clients=cfg.min_nodes,
            initial_parameters=to_parameters((initial[n] for n in names), self.dtype),
            accept_failures=True,
        )
        self.sent: Parameters | None = None  # the global model of the round under way
        self.history: list[dict[str, Any]] = []

    def _config(self, server_round: int) -> dict[str, Scalar]:
        config: dict[str, Scalar] = {"server-round": server_round}
        if self.cfg.strategy == "fedprox":
            config["proximal-mu"] = self.cfg.proximal_mu
        return config

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        self.sent = self._as_sent(parameters)
        pairs = super().configure_fit(server_round, self.sent, client_manager)
        for _, fit_ins in pairs:
            fit_ins.config.update(self._config(server_round))
        self.down_bytes = wire_bytes(ParametersView(self.names, self.sent))
        return pairs

    def _as_sent(self, parameters: Parameters) -> Parameters:
        """The global model in the dtype the nodes receive; a wrapper that changed it (the DP
        noise is float64) had its values rounded back, no more."""
        view = ParametersView(self.names, parameters)
        if all(view.dtype(n) == self.dtype for n in self.names):
            return parameters
        return to_parameters((view[n] for n in self.names), self.dtype)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        pairs = super().configure_evaluate(server_round, self._as_sent(parameters), client_manager)
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
        new: Parameters | None
        if self.cfg.secagg:  # the nodes' masked sum, unmasked: the mean of their weights
            merged = ParametersView(self.names, results[0][1].parameters)
            new = to_parameters((merged[n] for n in self.names), self.dtype)
            metrics: dict[str, Scalar] = {"accepted": len(results), "secagg": True}
        else:
            averaged, metrics = self._aggregate_plain(server_round, results)
            # no update survived: the model stays as it was sent
            new = (
                self.sent
                if averaged is None
                else to_parameters((averaged.pop(n) for n in self.names), self.dtype)
            )
        metrics["failures"] = len(failures)
        self.history.append({"round": server_round, **metrics})
        return new, metrics

    def _aggregate_plain(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[Arrays | None, dict[str, Scalar]]:
        replies: list[tuple[str, Mapping[str, np.ndarray], int, str | None]] = []
        up = 0
        for proxy, res in results:
            declined = str(res.metrics.get("declined", "")) or None
            payload: Mapping[str, np.ndarray]
            try:
                names = json.loads(str(res.metrics.get("payload-names", "[]")))
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError("payload-names is not a list of tensor names")
                payload = ParametersView(names, res.parameters)
            except (ValueError, TypeError) as err:
                payload = {"unreadable": np.zeros(1)}
                log.warning("node %s sent an unreadable update: %s", proxy.node_id, err)
            up += sum(len(t) for t in res.parameters.tensors)
            replies.append((str(proxy.node_id), payload, res.num_examples, declined))
        if self.sent is None:
            raise RuntimeError("aggregate_fit before configure_fit")
        reference = ParametersView(self.names, self.sent)
        new, outcome = aggregate_round(
            reference, replies, self.cfg.update_norm_bound, dtype=self.dtype
        )
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
