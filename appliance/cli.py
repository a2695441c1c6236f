"""`appliance` command line: train, evaluate, annotate, info, certs (+ serve, federate: plugins)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from appliance import cert_commands, notes_cli, registry_cli, remote
from appliance.config import ATTENTION_MODES, OPTIMIZERS, QUANTIZATIONS
from appliance.errors import ModelLoadError, PackageError
from appliance.exits import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_USAGE, CommandError
from appliance.notes import NotesError


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config with [model] and [train] tables")
    parser.add_argument("--state-dir", help="where caches and materialized bases live")
    parser.add_argument("--base", help="'embedded', a Hugging Face model dir, or a .gguf file")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="load the base in NF4")


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", "conll", "brat", "jsonl"),
        help="notes format (auto: by extension; a directory is BRAT)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip malformed records (each one reported) instead of stopping at the first",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train selected layers on annotated notes")
    _model_flags(train)
    _data_flags(train)
    train.add_argument(
        "--train", required=True, nargs="+", help="training notes: one or more files/BRAT dirs"
    )
    dev = train.add_mutually_exclusive_group()
    dev.add_argument("--dev", nargs="+", help="dev notes for early stopping (default: none)")
    dev.add_argument(
        "--dev-split",
        type=int,
        metavar="N",
        help="hold out the last N training notes as the dev set instead of --dev",
    )
    train.add_argument("--out", required=True, type=Path, help="model package dir to create")
    train.add_argument(
        "--layers", help="layer spec: top:N, bottom:N, layers:i,j, all, head or auto (default)"
    )
    train.add_argument("--attention", choices=ATTENTION_MODES, help="default: see README")
    train.add_argument("--epochs", type=int, help="maximum epochs (default 3)")
    train.add_argument("--batch-size", type=int, help="windows per step (default 16)")
    train.add_argument("--learning-rate", type=float, help="layers' peak LR (default 3e-4)")
    train.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="adamw (default) or the leaner adafactor"
    )
    train.add_argument("--seed", type=int, help="seed (default 13)")
    train.add_argument("--max-train-notes", type=int, help="use only the first N notes")
    train.add_argument("--max-dev-notes", type=int, help="use only the first N dev notes")
    train.add_argument("--no-cache", action="store_true", help="disable the activation cache")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--checkpoint",
        type=Path,
        help="save the training's state here after every epoch and resume from it if it exists "
        "(same settings and notes; removed once the package is written)",
    )

    evaluate = sub.add_parser("evaluate", help="strict entity F1 and span F1 of a package")
    _model_flags(evaluate)
    _data_flags(evaluate)
    evaluate.add_argument("--package", required=True, type=Path)
    evaluate.add_argument("--data", required=True, help="annotated notes to score against")
    evaluate.add_argument("--max-notes", type=int, help="score only the first N notes")

    annotate = sub.add_parser("annotate", help="find entities in a note: JSON on stdout")
    _model_flags(annotate)
    annotate.add_argument("--package", type=Path, help="annotate locally with this package")
    annotate.add_argument("--remote", metavar="HOST:PORT", help="annotate on a serving endpoint")
    annotate.add_argument("--ca", type=Path, help="--remote over TLS: trust this CA")
    annotate.add_argument("--cert", type=Path, help="--remote mTLS client certificate")
    annotate.add_argument("--key", type=Path, help="--remote mTLS client key")
    source = annotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the note text")
    source.add_argument("--file", type=Path, help="a UTF-8 text file holding one note")
    annotate.set_defaults(handler=remote.annotate)

    info = sub.add_parser("info", help="base model, selected layers, parameters, provenance")
    _model_flags(info)
    info.add_argument("--package", type=Path, help="a model package to describe")
    info.add_argument("--layers", help="describe this selection on the base (default auto)")

    cert_commands.add_parser(sub)
    registry_cli.add_parser(sub)
    notes_cli.add_parser(sub)
    _register_plugins(sub)
    return parser


def _register_plugins(sub: argparse._SubParsersAction) -> None:
    """Let `serving` and `federation` add their subcommands: the core never imports them.

    Each entry point in the `appliance.cli` group is `register(sub)`; it adds its own parsers
    with `set_defaults(handler=...)` and leaves the core's parsers alone (`annotate --remote`
    reaches serving through the `appliance.remote_annotator` group, see appliance/remote.py).
    """
    for point in sorted(entry_points(group="appliance.cli"), key=lambda p: p.name):
        point.load()(sub)


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], object]:
    """The command's function. The core's are imported only now: torch and transformers take
    seconds and hundreds of MB, which `serve` with a torch-free backend never needs."""
    plugin = getattr(args, "handler", None)
    if plugin is not None:
        return plugin  # type: ignore[no-any-return]
    from appliance import commands

    return getattr(commands, args.command)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = _handler(args)(args)
    except CommandError as err:
        return _fail(err.exit_code, str(err))
    except NotesError as err:
        return _fail(EXIT_INPUT, f"bad input: {err}")
    except (ModelLoadError, PackageError) as err:
        return _fail(EXIT_MODEL, str(err))
    except ValueError as err:
        return _fail(EXIT_USAGE, str(err))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    if result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"appliance: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
