"""What each `appliance` subcommand does; `cli.py` only parses flags and maps errors to exits."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.config import ApplianceConfig, load_config
from appliance.evaluation import evaluate_predictions
from appliance.exits import CommandError
from appliance.inference import Annotator, spans_as_json
from appliance.layers import AUTO, LayerSelection, auto_spec
from appliance.model import base_shape, describe, load_model, resolve_source
from appliance.notes import Note, NotesError, ReadResult
from appliance.package import load_packaged_model, read_package, save_package
from appliance.readers import read_notes, read_text_file
from appliance.training import Trainer


def config_from(args: argparse.Namespace) -> ApplianceConfig:
    """CLI flags override the TOML file, which overrides the defaults."""
    flag = lambda name: getattr(args, name, None)  # noqa: E731
    no_cache = True if flag("no_cache") else None
    return load_config(
        flag("config"),
        state_dir=flag("state_dir"),
        **{
            "model.base": flag("base"),
            "model.attention": flag("attention"),
            "model.quantization": flag("quantization"),
            "train.layers": flag("layers"),
            "train.epochs": flag("epochs"),
            "train.batch_size": flag("batch_size"),
            "train.learning_rate": flag("learning_rate"),
            "train.optimizer": flag("optimizer"),
            "train.seed": flag("seed"),
            "train.max_train_notes": flag("max_train_notes"),
            "train.max_dev_notes": flag("max_dev_notes"),
            "train.use_cache": None if no_cache is None else False,
        },
    )


def layer_spec(cfg: ApplianceConfig, spec: str | None = None) -> str:
    """`spec` (default: the config's train.layers) with `auto` resolved for the config's base."""
    spec = spec or cfg.train.layers
    if spec.strip().lower() != AUTO:
        return spec
    parameters, num_layers = base_shape(resolve_source(cfg.model.base), Path(cfg.state_dir))
    return auto_spec(num_layers, parameters)


def load_notes(
    paths: str | list[str],
    fmt: str,
    labels: tuple[str, ...] | None,
    skip_bad: bool,
    limit: int = 0,
) -> list[Note]:
    """Read notes, report every skipped record on stderr, keep the first `limit` (0: all)."""
    result = ReadResult()
    for path in [paths] if isinstance(paths, str) else paths:
        part = read_notes(path, fmt=fmt, labels=set(labels) if labels else None, skip_bad=skip_bad)
        for skipped in part.skipped:
            print(f"appliance: {skipped}", file=sys.stderr)
        if part.skipped:
            print(f"appliance: {len(part.skipped)} record(s) skipped in {path}", file=sys.stderr)
        result.extend(part)
    return result.notes[:limit] if limit else result.notes


def file_digest(paths: list[str]) -> str:
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for item in files:
        if item.is_file():
            digest.update(item.read_bytes())
    return "sha256:" + digest.hexdigest()


def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config_from(args)
    labels = cfg.train.labels
    train_notes = load_notes(
        args.train, args.format, labels, args.skip_bad, cfg.train.max_train_notes
    )
    dev_notes = (
        load_notes(args.dev, args.format, labels, args.skip_bad, cfg.train.max_dev_notes)
        if args.dev
        else []
    )
    if args.dev_split:
        if not 0 < args.dev_split < len(train_notes):
            raise ValueError(
                f"--dev-split {args.dev_split}: need 0 < N < {len(train_notes)} "
                "(the number of training notes)"
            )
        train_notes, dev_notes = train_notes[: -args.dev_split], train_notes[-args.dev_split :]
    if Path(args.out).exists():
        raise ValueError(f"{args.out}: already exists; choose a new package path")
    cfg.train = replace(cfg.train, layers=layer_spec(cfg))  # the package records what trained
    loaded = load_model(cfg.model, labels, cfg.state_dir, cfg.train.layers)
    selection = LayerSelection.parse(cfg.train.layers, loaded.num_layers)
    started = time.perf_counter()
    trainer = Trainer(loaded, selection, cfg.train, progress=not args.no_progress)
    trainer.checkpoint = args.checkpoint
    result = trainer.fit(train_notes, dev_notes)
    training = {
        "config": cfg.to_dict(),
        "data": {
            "train": {
                "path": args.train,
                "digest": file_digest(args.train),
                "notes": len(train_notes),
            },
            "dev": {
                "path": args.dev,
                "digest": file_digest(args.dev) if args.dev else None,
                "split_from_train": args.dev_split or 0,
                "notes": len(dev_notes),
            },
        },
        "result": result.as_dict(),
        "seconds": time.perf_counter() - started,
    }
    windowing = {"max_tokens": cfg.train.max_tokens, "context_tokens": cfg.train.context_tokens}
    try:
        path = save_package(args.out, loaded, selection, windowing, training)
    except OSError as err:
        kept = f"; the training is kept in {args.checkpoint}" if args.checkpoint else ""
        raise CommandError(f"{args.out}: cannot write the package ({err.strerror}){kept}") from err
    if args.checkpoint is not None:
        args.checkpoint.unlink(missing_ok=True)  # the package holds the training now
    return {
        "package": str(path),
        "best_epoch": result.best_epoch,
        "best_dev_f1": result.best_dev_f1,
        "epochs_run": len(result.history),
        "exchange": selection.report(loaded.model),
    }


def _packaged_annotator(args: argparse.Namespace) -> tuple[Annotator, dict[str, Any]]:
    cfg = config_from(args)
    base = getattr(args, "base", None)
    loaded, package = load_packaged_model(args.package, cfg.state_dir, base, cfg.model.quantization)
    windowing = package.meta["windowing"]
    return Annotator(loaded, windowing["max_tokens"], windowing["context_tokens"]), package.meta


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    annotator, meta = _packaged_annotator(args)
    types = tuple(t[2:] for t in meta["labels"] if t.startswith("B-"))
    notes = load_notes(args.data, args.format, types, args.skip_bad, args.max_notes or 0)
    started = time.perf_counter()
    predictions = annotator.predict(notes)
    metrics = evaluate_predictions(notes, predictions)
    return {
        "package": str(args.package),
        "data": args.data,
        "notes": len(notes),
        "seconds": round(time.perf_counter() - started, 2),
        **metrics,
    }


def annotate(args: argparse.Namespace) -> list[dict[str, Any]]:
    text = args.text if args.text is not None else read_text_file(args.file)
    where = str(args.file) if args.file else "--text"
    if not text.strip():
        raise NotesError(where, 1, "the note is empty")
    annotator, _ = _packaged_annotator(args)
    return spans_as_json(text, annotator.annotate([text])[0])


def info(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config_from(args)
    if args.package:
        meta = read_package(args.package).meta
        return {
            "package": str(args.package),
            "base": meta["base"],
            "attention": meta["attention"],
            "labels": meta["labels"],
            "layers": meta["layers"],
            "exchange": meta["exchange"],
            "created": meta["created"],
            "software": meta["software"],
            "training": {k: meta["training"].get(k) for k in ("data", "result", "seconds")},
        }
    spec = layer_spec(cfg, args.layers)
    loaded = load_model(cfg.model, cfg.train.labels, cfg.state_dir, spec)
    selection = LayerSelection.parse(spec, loaded.num_layers)
    return {**describe(loaded), "selection": selection.report(loaded.model)}
