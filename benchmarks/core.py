"""Core benchmark: SmolLM2-135M on BC5CDR, layer selections, causal vs bidirectional, cache speed.

Writes benchmarks/results/core.md (rewritten after every configuration, so a cut-short run
still leaves what it measured). Run from the repository root:

    .venv/bin/python benchmarks/core.py [--train-notes N] [--epochs E] ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import ModelConfig, TrainConfig  # noqa: E402
from appliance.evaluation import evaluate_predictions  # noqa: E402
from appliance.inference import Annotator  # noqa: E402
from appliance.layers import LayerSelection  # noqa: E402
from appliance.model import load_model  # noqa: E402
from appliance.objective import build_optimizer  # noqa: E402
from appliance.readers import read_notes  # noqa: E402
from appliance.training import Trainer, seed_everything  # noqa: E402

DATA = ROOT / "data" / "bc5cdr"
RESULT = ROOT / "benchmarks" / "results" / "core.md"
STORE = RESULT.with_suffix(".json")
LABELS = ("Chemical", "Disease")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def run_config(args: argparse.Namespace, spec: str, attention: str, notes: dict) -> dict:
    cfg = TrainConfig(
        layers=spec,
        epochs=args.epochs,
        cache_dir=str(Path(args.state_dir) / "act"),
        max_tokens=256,
        context_tokens=32,
        seed=13,
    )
    loaded = load_model(
        ModelConfig(base="embedded", attention=attention), LABELS, args.state_dir, spec
    )
    selection = LayerSelection.parse(spec, loaded.num_layers)
    report = selection.report(loaded.model)
    result = Trainer(loaded, selection, cfg, progress=False).fit(notes["train"], notes["dev"])
    started = time.perf_counter()
    annotator = Annotator(loaded, cfg.max_tokens, cfg.context_tokens, batch_size=16)
    metrics = evaluate_predictions(notes["test"], annotator.predict(notes["test"]))
    strict, span = metrics["entity_strict"], metrics["span_exact"]
    return {
        "spec": spec,
        "attention": attention,
        "f1": strict["overall"]["f1"],
        "chem": strict["Chemical"]["f1"],
        "dis": strict["Disease"]["f1"],
        "span_f1": span["overall"]["f1"],
        "params": report["trainable_parameters"],
        "bytes": report["exchange_bytes"],
        "epoch_s": [round(h.train_seconds, 1) for h in result.history],
        "dev_f1": [round(h.dev_f1, 3) for h in result.history],
        "cache_s": round(result.cache_seconds, 1),
        "test_s": round(time.perf_counter() - started, 1),
    }


def time_epochs(args: argparse.Namespace, notes: list, spec: str, reps: int = 2) -> dict:
    """One training epoch over the same windows with and without the cache, alternated."""
    cfg = TrainConfig(layers=spec, epochs=1, cache_dir=str(Path(args.state_dir) / "act-t"))
    loaded = load_model(ModelConfig(base="embedded"), LABELS, args.state_dir, spec)
    selection = LayerSelection.parse(spec, loaded.num_layers)
    trainer = Trainer(loaded, selection, cfg, progress=False)
    windows = trainer.encode(notes)
    started = time.perf_counter()
    states, hit = trainer.prefix(windows)
    build = time.perf_counter() - started
    optimizer = build_optimizer(loaded.model, selection, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    timings: dict[str, list[float]] = {"uncached": [], "cached": []}
    for _ in range(reps):
        for name, st in (("uncached", None), ("cached", states)):
            stats = trainer._epoch(1, windows, st, optimizer, scheduler, seed_everything(1))
            timings[name].append(stats.train_seconds)
    tokens = sum(len(w) for w in windows)
    return {
        "windows": len(windows),
        "tokens": tokens,
        "build_s": build,
        "frozen": selection.first,
        "hit": hit,
        **timings,
    }


def render_timing(timing: dict) -> list[str]:
    first = next(iter(timing.values()))
    lines = [
        "",
        "## Epoch time with and without the frozen-prefix cache (default attention)",
        "",
        f"Same {first['windows']} windows ({first['tokens']:,} tokens), same batches, both paths "
        "alternated in one process; best of the repetitions. The cache build is a one-off "
        "forward pass of the frozen layers, reused by later epochs and later runs on the same "
        "data.",
        "",
        "| layers | uncached s (each rep) | cached s (each rep) | tokens/s uncached / cached "
        "| speed-up | cache build s (once) |",
        "|---|---|---|---|---|---|",
    ]
    for spec, t in timing.items():
        unc, cac = min(t["uncached"]), min(t["cached"])
        lines.append(
            f"| {spec} | {[round(x, 1) for x in t['uncached']]} "
            f"| {[round(x, 1) for x in t['cached']]} "
            f"| {t['tokens'] / unc:.0f} / {t['tokens'] / cac:.0f} | **{unc / cac:.2f}x** "
            f"| {'read from disk in ' if t.get('hit') else ''}{t['build_s']:.1f} |"
        )
    return lines


def render(args: argparse.Namespace, rows: list[dict], timing: dict | None, sizes: dict) -> str:
    commands = sorted(
        {r["command"] for r in rows} | {t["command"] for t in (timing or {}).values()}
    )
    lines = [
        "# Core benchmark: SmolLM2-135M token classifier on BC5CDR",
        "",
        *[f"- command: `{c}`" for c in commands],
        f"- machine: {machine()}",
        f"- date of the last run: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- data: first {sizes['train']} train / {sizes['dev']} devel (early stopping) / "
        f"{sizes['test']} test sentences of the vendored BC5CDR; {args.epochs} epoch(s) at most",
        "- limits: budgets cut to fit a 2-core CPU box (see the README's notes on this file); "
        "F1 is strict entity-level (seqeval, IOB2) on the test sentences used.",
        "",
        "| layers | attention | strict F1 | Chemical | Disease | span F1 | trainable params "
        "| MB per exchange | train s/epoch | dev F1 per epoch | cache build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spec']} | {r['attention']} | {r['f1']:.3f} | {r['chem']:.3f} | {r['dis']:.3f} "
            f"| {r['span_f1']:.3f} | {r['params']:,} | {r['bytes'] / 1e6:.1f} | {r['epoch_s']} "
            f"| {r['dev_f1']} | {r['cache_s']} |"
        )
    lines += [
        "",
        "Notes: `all` trains every layer, so it has no frozen prefix to cache (build 0.0). The "
        "per-epoch seconds in this table were partly taken while other jobs shared the 2 cores "
        "(e.g. the first `top:8` epoch); the side-by-side timing below is the clean comparison.",
    ]
    if timing:
        lines += render_timing(timing)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-notes", type=int, default=2000)
    parser.add_argument("--dev-notes", type=int, default=400)
    parser.add_argument("--test-notes", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--timing-notes", type=int, default=256)
    parser.add_argument("--timing-specs", default="top:8,top:4")
    parser.add_argument(
        "--configs",
        default="top:8/bidirectional,top:8/causal,top:8/bidirectional-trained,"
        "top:4/bidirectional-trained,all/bidirectional",
    )
    parser.add_argument("--state-dir", default=str(Path.home() / ".cache" / "appliance"))
    args = parser.parse_args()
    sizes = {"train": args.train_notes, "dev": args.dev_notes, "test": args.test_notes}
    notes = {
        k: read_notes(str(DATA / f"{'devel' if k == 'dev' else k}.tsv")).notes[:n]
        for k, n in sizes.items()
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python benchmarks/core.py " + shlex.join(sys.argv[1:])
    # Rows of earlier runs with the same data sizes are kept; a re-run config replaces its row.
    saved = json.loads(STORE.read_text()) if STORE.is_file() else {}
    same = saved.get("sizes") == sizes and saved.get("epochs") == args.epochs
    rows: list[dict] = saved.get("rows", []) if same else []
    timing = saved.get("timing") if same else None
    if timing and "uncached" in timing:  # older single-selection format
        timing = {"top:8": timing}
    if args.timing_notes:
        timing = dict(timing or {})
        for spec in filter(None, args.timing_specs.split(",")):
            measured = time_epochs(args, notes["train"][: args.timing_notes], spec)
            timing[spec] = {**measured, "command": command}
    for item in filter(None, args.configs.split(",")):
        spec, attention = item.split("/")
        row = {**run_config(args, spec, attention, notes), "command": command}
        rows = [r for r in rows if (r["spec"], r["attention"]) != (spec, attention)] + [row]
        STORE.write_text(
            json.dumps(
                {"sizes": sizes, "epochs": args.epochs, "rows": rows, "timing": timing}, indent=1
            )
        )
        RESULT.write_text(render(args, rows, timing, sizes))
        print(row, flush=True)
    STORE.write_text(
        json.dumps(
            {"sizes": sizes, "epochs": args.epochs, "rows": rows, "timing": timing}, indent=1
        )
    )
    RESULT.write_text(render(args, rows, timing, sizes))


if __name__ == "__main__":
    main()
