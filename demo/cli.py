"""`python -m demo`: flags, then the consortium demo or (`--single-box`) the one-box demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demo.sources import DATA, WARM_START, check_data

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=(
            "A consortium of 3 hospital boxes on this machine (SuperLink, SuperNodes, serving), "
            "a few federated rounds with DP-SGD from a public warm start on BC5CDR shards, "
            "promotion into serving, one gRPC call. "
            "Run from the repository root after `bash .ci/setup`."
        ),
    )
    parser.add_argument("--state-dir", help="where caches, bases and packages live")
    parser.add_argument("--data", type=Path, default=DATA, help=f"BC5CDR folder (default {DATA})")
    parser.add_argument("--quick", action="store_true", help="a smaller run for a smoke test")
    parser.add_argument("--rounds", type=int, help="federated rounds (default 2; --quick 1)")
    parser.add_argument("--backend", help="serving backend of every box (default torch-fp32)")
    parser.add_argument(
        "--workdir", type=Path, help="demo folder (default <state-dir>/demo/<time>)"
    )
    parser.add_argument(
        "--no-dp", action="store_true", help="the same rounds without DP-SGD (no epsilon spent)"
    )
    parser.add_argument(
        "--make-warm-start",
        action="store_true",
        help=f"rebuild the public warm start the consortium starts from ({WARM_START.name}; "
        "~13 min of one core), then stop",
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo folder (logs, models)")
    parser.add_argument(
        "--single-box", action="store_true", help="one box: train, evaluate and annotate"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The single-box demo's or the warm start's result (printed as JSON); None for the
    consortium, whose summary is printed as it runs."""
    from appliance.config import ApplianceConfig

    data = check_data(args.data)
    if args.single_box:
        from demo.single_box import run_demo as single_box

        return single_box(args.state_dir, data, quick=args.quick)
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: must be >= 1")
    from demo import warm_start
    from demo.federated import run_demo
    from demo.plan import make_plan

    state_dir = Path(ApplianceConfig(state_dir=args.state_dir or "").state_dir)
    if args.make_warm_start:
        return warm_start.make(state_dir, data)
    plan = make_plan(args.quick, args.rounds, args.backend, dp=not args.no_dp)
    warm_start.check(plan.federation.warm_start)
    run_demo(state_dir, data, plan, args.workdir, args.keep)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = run(args)
    except ValueError as err:  # bad flags or data, a model that does not load
        return _fail(EXIT_USAGE, str(err))
    except (RuntimeError, TimeoutError) as err:
        return _fail(EXIT_FAILED, f"demo failed: {err}")
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    if result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"demo: error: {message}", file=sys.stderr)
    return code
