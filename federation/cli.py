"""`appliance federate ...`: the nightly daemon, its status, manual promotion, the consortium's
keys and its warm start."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from appliance.exits import EXIT_INPUT, EXIT_MODEL, CommandError
from appliance.note_store import StoreError
from appliance.notes import NotesError
from appliance.registry import ModelRegistry, RegistryError
from federation.daemon_config import DaemonConfig, load_daemon_config
from federation.journal import RoundJournal, read_journal
from federation.notes_source import read_node_notes

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `appliance federate` and its subcommands to the core CLI."""
    federate = sub.add_parser("federate", help="nightly federated training on this hospital box")
    actions = federate.add_subparsers(dest="federate_command", required=True)
    daemon = actions.add_parser("daemon", help="run the SuperNode inside the training window")
    daemon.add_argument("--config", required=True, type=Path, help="daemon.toml ([daemon])")
    daemon.add_argument("--metrics-port", type=int, help="Prometheus port (default from config)")
    daemon.set_defaults(handler=run_daemon)
    status = actions.add_parser("status", help="current model, last rounds, privacy spend")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--last", type=int, default=10, help="how many journal events to show")
    status.set_defaults(handler=show_status)
    promote = actions.add_parser("promote", help="publish a package; promote it if not worse")
    promote.add_argument("--config", required=True, type=Path)
    promote.add_argument("--candidate", required=True, type=Path, help="a model package dir")
    promote.add_argument("--tolerance", type=float, help="override the config's tolerance")
    promote.set_defaults(handler=manual_promote)
    certs = actions.add_parser("certs", help="consortium CA, SuperLink TLS cert, SuperNode keys")
    certs.add_argument("--out", required=True, type=Path, help="folder to create (files 0600)")
    certs.add_argument("--hospitals", required=True, nargs="+", help="one auth key per name")
    certs.add_argument("--host", action="append", help="SuperLink DNS name or IP (repeatable)")
    certs.set_defaults(handler=make_certs)
    warm = actions.add_parser("warm-start", help="the consortium's round-0 model from public notes")
    warm.add_argument("--notes", required=True, nargs="+", type=Path, help="public annotated notes")
    warm.add_argument("--out", required=True, type=Path, help="the .npz to write")
    warm.add_argument("--epochs", type=int, default=3, help="passes over the notes")
    warm.add_argument("--batch-size", type=int, default=16, help="windows per step")
    warm.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the run's settings, as `flwr run --run-config` takes them (repeatable)",
    )
    warm.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance",
                      help="where the base is materialized")  # fmt: skip
    warm.set_defaults(handler=make_warm)


def _config(args: argparse.Namespace) -> DaemonConfig:
    try:
        return load_daemon_config(args.config)
    except ValueError as err:
        raise CommandError(str(err)) from err


def run_daemon(args: argparse.Namespace) -> None:
    from federation.daemon import NightlyDaemon

    cfg = _config(args)
    daemon = NightlyDaemon(cfg)
    port = daemon.metrics.serve(cfg.metrics_address, args.metrics_port or cfg.metrics_port)
    log.warning("federation daemon %s: metrics on %s:%d", cfg.hospital, cfg.metrics_address, port)
    daemon.install_signal_handlers()
    try:
        daemon.run()
    finally:
        daemon.metrics.close()


def show_status(args: argparse.Namespace) -> dict[str, Any]:
    cfg = _config(args)
    registry = ModelRegistry(cfg.registry)
    try:
        current = registry.current()
    except RegistryError as err:
        raise CommandError(str(err), EXIT_MODEL) from err
    events = [{"time": e.time, "event": e.event, **e.fields} for e in read_journal(cfg.journal)][
        -args.last :
    ]
    return {
        "hospital": cfg.hospital,
        "window": cfg.window,
        "current": current.version if current else None,
        "versions": len(registry.versions()),
        "privacy": _ledger(cfg),
        "last_events": events,
    }


def _ledger(cfg: DaemonConfig) -> dict[str, Any] | None:
    """The privacy ledger's summary when the node has one (written by the ClientApp)."""
    for path in sorted(cfg.state_dir.glob("**/privacy-ledger*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        keep = ("epsilon_budget", "delta", "epsilon_spent", "rounds")
        summary = {k: raw[k] for k in keep if k in raw and not isinstance(raw[k], list)}
        return {"path": str(path), **summary}
    return None


def manual_promote(args: argparse.Namespace) -> dict[str, Any]:
    from federation.promotion import promote_if_not_worse

    cfg = _config(args)
    try:
        heldout = read_node_notes(cfg.node_values()).heldout
    except (NotesError, StoreError) as err:
        raise CommandError(f"held-out notes: {err}", EXIT_INPUT) from err
    tolerance = cfg.tolerance if args.tolerance is None else args.tolerance
    try:
        decision = promote_if_not_worse(
            cfg.registry,
            args.candidate,
            heldout,
            tolerance,
            cfg.state_dir,
            label="manual",
            journal=RoundJournal(cfg.journal),
        )
    except (RegistryError, OSError) as err:
        raise CommandError(str(err), EXIT_MODEL) from err
    if decision.outcome == "broken":
        raise CommandError(f"{args.candidate}: not promoted, {decision.reason}", EXIT_MODEL)
    return {
        "outcome": decision.outcome,
        "version": decision.version,
        "reason": decision.reason,
        "candidate_f1": decision.candidate_f1,
        "current_f1": decision.current_f1,
    }


def make_warm(args: argparse.Namespace) -> dict[str, Any]:
    import tomllib

    from appliance.readers import read_notes
    from federation.config import from_run_config
    from federation.warm_start import make_warm_start

    values: dict[str, Any] = {}
    for item in args.run_config:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CommandError(f"--run-config {item!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw  # a bare string
    if args.epochs < 1 or args.batch_size < 1:
        raise CommandError("--epochs and --batch-size must be at least 1")
    try:
        cfg = from_run_config(values)
    except ValueError as err:
        raise CommandError(str(err)) from err
    notes = []
    for path in args.notes:
        try:
            notes.extend(read_notes(str(path)).notes)
        except NotesError as err:
            raise CommandError(str(err), EXIT_INPUT) from err
    return make_warm_start(cfg, notes, args.epochs, args.out, args.state_dir, args.batch_size)


def make_certs(args: argparse.Namespace) -> dict[str, str]:
    from federation.deploy import make_certificates

    if args.out.exists() and any(args.out.iterdir()):
        raise CommandError(f"{args.out}: exists and is not empty; refusing to overwrite keys")
    hosts = tuple(args.host or ("127.0.0.1", "localhost"))
    return {k: str(v) for k, v in make_certificates(args.out, args.hospitals, hosts).items()}
