"""The consortium's Flower ServerApp: rounds of FedAvg/FedProx, plain or under SecAgg+."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import numpy as np
from flwr.common import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from appliance.config import TrainConfig
from appliance.layers import LayerSelection
from appliance.training import Trainer
from federation import modes
from federation.config import FederationConfig, from_run_config
from federation.strategy import ConsortiumStrategy
from federation.task import load_for_training, seeded_start
from federation.warm_start import load_warm_start

log = logging.getLogger(__name__)


def initial_global(
    cfg: FederationConfig, state_dir: Path
) -> tuple[FederationConfig, list[str], dict[str, np.ndarray]]:
    """`cfg` resolved for the base as the nodes resolve it, and the starting weights of the
    travelling part: the same seeded init every node makes, or the run's warm start checked
    against it. The frozen part is loaded as the nodes load it (NF4 for a large base): it never
    travels."""
    cfg, loaded = load_for_training(cfg, state_dir, gpu=False)
    selection = LayerSelection.parse(cfg.spec, loaded.num_layers)
    train_cfg = TrainConfig(layers=cfg.spec, labels=cfg.labels, seed=cfg.seed)
    trainer = Trainer(loaded, selection, train_cfg, progress=False, fresh_head=False)
    names = seeded_start(trainer, cfg)
    arrays = modes.get_arrays(loaded.model, names)
    if cfg.warm_start:
        arrays = load_warm_start(Path(cfg.warm_start), cfg, arrays)
        log.warning("round 0 starts from the warm start %s", cfg.warm_start)
    elif cfg.dp:
        log.warning(
            "DP-SGD from the seeded start: noisy rounds on a few hundred notes a hospital "
            "learn little (0.19 strict F1 at epsilon 8 in docs/results.md); name a public warm "
            "start in the run config (warm-start; `appliance federate warm-start` makes one)"
        )
    return cfg, names, arrays


def build_strategy(
    cfg: FederationConfig, names: list[str], initial: dict[str, np.ndarray]
) -> tuple[ConsortiumStrategy, Strategy]:
    """Our strategy, wrapped in Flower's client-side fixed-clipping DP when asked."""
    inner = ConsortiumStrategy(cfg, names, initial)
    if cfg.client_dp == "client-fixed":
        sampled = max(cfg.min_nodes, 1)
        return inner, DifferentialPrivacyClientSideFixedClipping(
            inner,
            noise_multiplier=cfg.client_dp_noise,
            clipping_norm=cfg.client_dp_clip,
            num_sampled_clients=sampled,
        )
    return inner, inner


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    state_dir = Path(os.environ.get("APPLIANCE_STATE_DIR", Path.home() / ".cache" / "appliance"))
    cfg, names, initial = initial_global(from_run_config(context.run_config), state_dir)
    _, strategy = build_strategy(cfg, names, initial)
    del initial  # the strategy holds its own copy, which it replaces every round
    gc.collect()  # the model loaded for the start holds reference cycles: free it before rounds
    fit_workflow = None
    if cfg.secagg:
        fit_workflow = SecAggPlusWorkflow(
            num_shares=cfg.secagg_shares,
            reconstruction_threshold=cfg.secagg_threshold,
            clipping_range=cfg.secagg_clip,
        )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout_s),
        strategy=strategy,
    )
    log.info("consortium run: %s mode, %s, %d rounds", cfg.mode, cfg.strategy, cfg.rounds)
    workflow = DefaultWorkflow(fit_workflow=fit_workflow) if fit_workflow else DefaultWorkflow()
    workflow(grid, legacy)
