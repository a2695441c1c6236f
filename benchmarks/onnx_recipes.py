"""Which ONNX quantization recipe: accuracy and speed of each variant on the same package, one run.

    .venv/bin/python benchmarks/onnx_recipes.py [--sentences 600] [--notes 160] [--state-dir DIR]

Exports the serving benchmark's package to fp32 ONNX once (serving/backends/onnx_trace.py), then
quantizes it several ways and runs each with ONNX Runtime in this process, side by side:
strict F1 on the first N BC5CDR test sentences and on notes of ~500 tokens (the windows the
server cuts), throughput on windows of ~250 tokens in batches of 16 (what the server batches for
500-token notes), and the file size. Sentence and note F1 disagree by up to two points for some
recipes (symmetric int4), so both are reported.
Writes benchmarks/results/onnx_recipes.md. This is the evidence behind the `onnx-int4` and
`onnx-int8` recipes (accuracy_level, which MatMuls stay 4-bit).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.decoding import assemble  # noqa: E402
from appliance.encoding import encode_notes, pad_windows, word_tags  # noqa: E402
from appliance.evaluation import entity_scores  # noqa: E402
from appliance.notes import Note  # noqa: E402
from appliance.package_meta import read_package_meta  # noqa: E402
from appliance.readers import read_conll  # noqa: E402
from appliance.windows import right_context  # noqa: E402
from benchmarks.serving import build_notes, ensure_package, machine  # noqa: E402
from serving.backends.onnx_export import (  # noqa: E402
    FP32_FILE,
    RECIPES,
    TOKENIZER_DIR,
    quantize_file,
)
from serving.backends.onnx_trace import trace_fp32  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "onnx_recipes.md"
Windowing = tuple[int, int, int]  # max tokens, left context, right context


def variants(src: Path) -> dict[str, Callable[[Path], None] | None]:
    def int4(symmetric: bool, level: int, block: int = 32) -> Callable[[Path], None]:
        recipe = {
            **RECIPES["onnx-int4"],
            "symmetric": symmetric,
            "accuracy_level": level,
            "block_size": block,
        }
        return lambda dst: quantize_file(src, dst, recipe)

    def int8(keep4: list[str]) -> Callable[[Path], None]:
        recipe = {**RECIPES["onnx-int8"], "int4_matmuls": keep4}
        return lambda dst: quantize_file(src, dst, recipe)

    return {
        "fp32 (no quantization)": None,
        "int4 asymmetric, accuracy_level 0 (onnx-int4)": int4(False, 0),
        "int4 asymmetric, accuracy_level 4 (int8 compute)": int4(False, 4),
        "int4 asymmetric, blocks of 128, accuracy_level 4": int4(False, 4, 128),
        "int4 symmetric, accuracy_level 0": int4(True, 0),
        "int4 symmetric, accuracy_level 4": int4(True, 4),
        "int8 everywhere": int8([]),
        "int8, down_proj int4 (onnx-int8)": int8(["down_proj"]),
    }


LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
Runner = Callable[[list[Any]], list[np.ndarray]]


def _runner(path: Path, pad_id: int) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(windows: list[Any]) -> list[np.ndarray]:
        out = []
        for i in range(0, len(windows), 16):
            batch = windows[i : i + 16]
            ids, mask, _ = pad_windows(batch, pad_id)
            (lp,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            out += [lp[r, [w.word_token[j] for j in w.core_words]] for r, w in enumerate(batch)]
        return out

    return run


def _f1(run: Runner, notes: list[Note], windows: list[Any]) -> float:
    predictions = assemble(len(notes), windows, run(windows), LABELS)
    gold = [word_tags(n.words or (), n.entities) for n in notes]
    return float(entity_scores(gold, [list(p.tags) for p in predictions])["overall"].f1)


def served_windowing(package: Path) -> Windowing:
    """The windows `appliance serve` cuts for `package` (no right context when it is causal)."""
    meta = read_package_meta(package)
    context = int(meta["windowing"]["context_tokens"])
    right = right_context(meta["attention"], context)
    return int(meta["windowing"]["max_tokens"]), context, right


def score(
    path: Path, sentences: list[Note], notes: list[Note], long: list[Any], tok: Any, w: Windowing
) -> dict[str, float]:
    """Strict F1 on `sentences` and on `notes` (windows `w`), tokens/s on `long`, file MB."""
    run = _runner(path, int(tok.pad_token_id))
    f1 = _f1(run, sentences, encode_notes(tok, sentences, None, *w))
    notes_f1 = _f1(run, notes, encode_notes(tok, notes, None, *w)) if notes else float("nan")
    run(long[:16])  # warm-up
    started = time.perf_counter()
    run(long)
    speed = sum(len(w) for w in long) / (time.perf_counter() - started)
    return {"f1": f1, "notes_f1": notes_f1, "tokens_per_s": speed, "mb": path.stat().st_size / 1e6}


Rows = list[tuple[str, dict[str, float]]]


def measure(args: argparse.Namespace) -> tuple[Rows, int, Windowing, str]:
    """Every variant's scores, the number of speed windows, the windowing, the train command."""
    package, train_command = ensure_package(args.state_dir)
    served = served_windowing(package)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        opset = RECIPES["onnx-int4"]["opset"]
        trace_fp32(package, args.state_dir, None, work / FP32_FILE, work / TOKENIZER_DIR, opset)
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(work / "tokenizer"))
        sentences = read_conll(ROOT / "data/bc5cdr/test.tsv").notes[: args.sentences]
        notes = [n for n, _ in build_notes(tok, args.notes, 500)] if args.notes else []
        long = encode_notes(tok, [n for n, _ in build_notes(tok, 8, 500)], None, *served)
        for i, (name, make) in enumerate(variants(work / "model.fp32.onnx").items()):
            path = work / "model.fp32.onnx" if make is None else work / f"v{i}.onnx"
            if make is not None:
                make(path)
            rows.append((name, score(path, sentences, notes, long, tok, served)))
            print(name, rows[-1][1], flush=True)
    return rows, len(long), served, train_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--notes", type=int, default=160, help="notes of ~500 tokens (0: none)")
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--out", type=Path, default=RESULT, help="the results file to write")
    args = parser.parse_args()
    rows, n_long, served, train_command = measure(args)
    lines = [
        "# ONNX quantization recipes",
        "",
        f"Command: `python {shlex.join(['benchmarks/onnx_recipes.py', *sys.argv[1:]])}`  ",
        f"Model: `{train_command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}",
        "",
        f"Strict F1 on the first {args.sentences} BC5CDR test sentences, and on {args.notes} "
        "notes of ~500 tokens built from consecutive test sentences (the serving benchmark's "
        "notes), both cut into the windows `appliance serve` uses for this package "
        f"({served[0]} tokens, {served[1]} of context before a core, {served[2]} after it); "
        "tokens/s on the "
        f"{n_long} windows of 8 such notes in batches of 16; one ONNX Runtime session per "
        "variant, run one after the other in one process. The token embedding is 4-bit and the "
        "head fp32 in every quantized variant.",
        "",
        "| variant | F1 sentences | vs fp32 (points) | F1 notes | vs fp32 (points) | tokens/s "
        "| speed vs fp32 | file MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = rows[0][1]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['f1']:.4f} | {(r['f1'] - base['f1']) * 100:+.2f} | "
            f"{r['notes_f1']:.4f} | {(r['notes_f1'] - base['notes_f1']) * 100:+.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
            f"{r['mb']:.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
