"""Signal against noise in one DP-SGD step, measured at the public warm start.

For a recipe of benchmarks/privacy.py, at its warm start (the model every DP round starts
from), this takes the gradients of `--windows` training windows of hospital-0, clips each to
the clipping norm and averages them: the step's signal, what a noiseless DP-SGD step would
follow. Beside it, the norm of the noise the same step adds at ε = 8 over 10 rounds (noise
multiplier x clipping norm x sqrt(trained weights) / batch), and with `--subspace N` how much of
the signal and of the noise a projection onto the top N directions of the public notes'
gradients keeps (federation.subspace). `alignment` is the signal's norm over the mean clipped
norm: 1 when every window pulls the same way, 1/sqrt(windows) when they are unrelated.
Writes results/privacy_signal.md (and .json). Run from the repository root:

    .venv/bin/python benchmarks/privacy_signal.py --recipes lora8-warm lora2-warm-r2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core import machine  # noqa: E402
from benchmarks.experiments_local import noise_for  # noqa: E402
from benchmarks.privacy import DELTA, RECIPES, base_config, recipe_warm_start  # noqa: E402
from benchmarks.privacy_lab import Corpus, add_corpus_args  # noqa: E402
from federation.subspace import public_subspace, window_gradients  # noqa: E402
from federation.task import HospitalNode  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "privacy_signal.md"


def measure(args: argparse.Namespace, corpus: Corpus, recipe: str) -> dict[str, Any]:
    cfg = base_config(args, recipe, args.seed)
    arrays = recipe_warm_start(args, corpus, recipe, args.seed)
    noise = noise_for(8.0, DELTA, min(len(p) for p in corpus.hospitals), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        node = HospitalNode.load(cfg, corpus.members, Path(tmp), "hospital-0", (), args.state_dir)
        node.set_arrays(arrays)
        grads = window_gradients(node.trainer, corpus.members, args.windows, args.seed)
        norms = grads.norm(dim=1)
        clip = cfg.dp_max_grad_norm
        clipped = grads * (clip / norms).clamp(max=1.0)[:, None]
        signal = clipped.mean(0)
        weights = int(grads.shape[1])
        noise_norm = noise * clip * weights**0.5 / cfg.batch_size
        row = {
            "recipe": recipe,
            "trained_weights": weights,
            "windows": int(grads.shape[0]),
            "median_norm": float(norms.median()),
            "clipped_share": float((norms > clip).float().mean()),
            "signal": float(signal.norm()),
            "alignment": float(signal.norm() / clipped.norm(dim=1).mean()),
            "noise_multiplier": noise,
            "noise": noise_norm,
        }
        if args.subspace:
            space = public_subspace(node.trainer, corpus.public, args.subspace, args.seed)
            row |= {
                "subspace": space.rank,
                "signal_kept": float((space.basis @ signal).norm() / signal.norm()),
                "noise_projected": noise * clip * space.rank**0.5 / cfg.batch_size,
            }
    return row


def batch_noise(args: argparse.Namespace, corpus: Corpus, recipe: str) -> list[dict[str, Any]]:
    """Noise over batch (what a step's noise adds per weight, x clipping norm) at ε = 8 over
    the rounds, for batches of 256, 512 and the smallest hospital whole."""
    smallest = min(len(p) for p in corpus.hospitals)
    table = []
    for batch in (256, 512, smallest):
        cfg = replace(base_config(args, recipe, args.seed), batch_size=batch)
        noise = noise_for(8.0, DELTA, smallest, cfg)
        steps = args.rounds * -(-smallest // batch)
        table.append({"batch": batch, "steps": steps, "noise": noise, "per_batch": noise / batch})
    return table


def write_report(
    rows: list[dict[str, Any]], batches: list[dict[str, Any]], command: str, path: Path
) -> None:
    lines = [
        "# Signal against noise in one DP-SGD step (at the public warm start)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()} ({time.strftime('%Y-%m-%d')})",
        "",
        __doc__.split("\n\n")[1].replace("\n", " ").split(" Writes results")[0],
        "",
        "| recipe | trained weights | windows | median gradient norm | clipped | signal norm "
        "| alignment | noise norm (ε 8) | signal / noise | public subspace | signal kept "
        "| projected noise | signal / noise, projected |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        projected = (
            f"| {r['subspace']} | {r['signal_kept']:.0%} | {r['noise_projected']:.4f} "
            f"| {r['signal'] * r['signal_kept'] / r['noise_projected']:.2f} |"
            if "subspace" in r
            else "| - | - | - | - |"
        )
        lines.append(
            f"| {r['recipe']} | {r['trained_weights']:,} | {r['windows']} "
            f"| {r['median_norm']:.3f} | {r['clipped_share']:.0%} | {r['signal']:.4f} "
            f"| {r['alignment']:.3f} | {r['noise']:.4f} | {r['signal'] / r['noise']:.3f} "
            + projected
        )
    lines += [
        "",
        "At ε = 8 over the rounds for the smallest hospital, a larger batch needs more noise: "
        "the noise each step adds over its batch, against the steps it leaves.",
        "",
        "| batch | steps in all | noise multiplier | noise / batch |",
        "|---|---|---|---|",
        *[
            f"| {b['batch']} | {b['steps']} | {b['noise']:.3f} | {b['per_batch']:.5f} |"
            for b in batches
        ],
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["lora8-warm"], choices=list(RECIPES))
    parser.add_argument("--windows", type=int, default=256, help="hospital-0 windows measured")
    parser.add_argument("--subspace", type=int, default=64, help="public directions (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    add_corpus_args(parser)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    corpus = Corpus.load(args.public, args.split_seed, args.train, args.test)
    rows = [measure(args, corpus, recipe) for recipe in args.recipes]
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    batches = batch_noise(args, corpus, args.recipes[0])
    write_report(
        rows, batches, "python benchmarks/privacy_signal.py " + shlex.join(sys.argv[1:]), args.out
    )


if __name__ == "__main__":
    main()
