"""benchmarks/results/scale.md from the record benchmarks/scale.py collected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GIB = 1024**3
PLAN_GIB = 14.0  # the sum of the peaks that can overlap, on a 16 GiB box
SERVING_BACKEND = "onnx-int8"  # the default on CPU; else the first backend measured
EXPORT_FILES = ["export.json", "model.onnx", "tokenizer"]


def _gib(mb: float) -> str:
    return f"{mb * 2**20 / GIB:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _run_cells(run: dict[str, Any]) -> list[str]:
    status = "ok" if run["code"] == 0 else f"exit {run['code']}: {run['tail']}"
    return [f"{run['seconds']:.0f}", _gib(run["peak_mb"]), status]


def step_rows(models: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in models.items():
        rows.append([name, "load the base (fp32)", *_run_cells(m["load"]), ""])
        trainings = (("train", "frozen part fp32"), ("train-nf4", "frozen part NF4"))
        for key, frozen in trainings:
            label = f"train top:8, {frozen}"
            row = m[key]
            speed = f"{row['tokens_per_s']:.1f} tokens/s" if "tokens_per_s" in row else ""
            rows.append([name, label, *_run_cells(row["run"]), speed])
        for backend, e in m["export"].items():
            clean = "only the served files" if e["files"] == EXPORT_FILES else f"{e['files']}"
            extra = f"{e['bytes'] / 1e6:.0f} MB on disk, {clean}"
            rows.append([name, f"ONNX export {backend}", *_run_cells(e["run"]), extra])
    return rows


def serve_rows(models: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in models.items():
        for backend, s in m["serve"].items():
            runs = s["runs"]
            rows.append(
                [name, backend, *(f"{runs[c]['tokens_per_s']:.0f}" for c in ("1", "8"))]
                + [f"{runs['1']['p50_ms']:.0f}", _gib(s["peak_rss_mb"])]
            )
    return rows


def plan_lines(models: dict[str, Any]) -> list[str]:
    out = []
    for name, m in models.items():
        backend = SERVING_BACKEND if SERVING_BACKEND in m["serve"] else next(iter(m["serve"]))
        serving = m["serve"][backend]["peak_rss_mb"]
        export = m["export"][backend]["run"]["peak_mb"]
        nightly = {"training (top:8, frozen fp32)": m["train"]["run"]["peak_mb"]}
        nightly[f"export ({backend})"] = export
        step, peak = max(nightly.items(), key=lambda kv: kv[1])
        total = (serving + peak) * 2**20 / GIB
        verdict = "met" if total <= PLAN_GIB else "**NOT met**"
        # MB: every layer and the embedding are quantized (the fp32 head is under 0.001%)
        quantized_fp32 = m["parameters"] * 4 / 2**20
        ratio = export / quantized_fp32
        out.append(
            f"- {name}: serving ({backend}) peaks at {_gib(serving)} GiB; the largest "
            f"nightly step is {step} at {_gib(peak)} GiB; together {total:.2f} GiB against "
            f"{PLAN_GIB:.0f} GiB: {verdict}. The export's peak is {ratio:.2f}x the fp32 size "
            f"of what it quantizes ({_gib(quantized_fp32)} GiB; target <= 2x)."
        )
    return out


def write_report(path: Path, r: dict[str, Any]) -> None:
    models = r["models"]
    lines = [
        "# The box at two sizes: SmolLM2-135M and the LLaMA 3.2-1B shape",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}, {r['memory_gib']:.1f} GiB memory  ",
        f"Date: {r['date']} ({r['seconds'] / 60:.0f} min in all)",
        "",
        "The 1B shape is `benchmarks/llama_1b_shape.py`: Llama-3.2-1B's published configuration "
        "with seeded random weights and the embedded tokenizer, so its speeds, memory and bytes "
        "are the real model's and its entities mean nothing. Each step is its own process, "
        "measured from outside (wall seconds; GNU time's peak RSS of the process and the "
        f"processes it waited for). Training: one epoch on {r['args']['train_notes']} BC5CDR "
        "training sentences, `top:8`, causal attention, the activation cache on (as the "
        f"nightly round runs). Serving: {r['args']['serve_notes']} notes of about 500 tokens "
        "over the real gRPC server, tokens/s of the notes' own tokens.",
        "",
        "## Steps",
        "",
        *_table(["model", "step", "seconds", "peak RSS GiB", "status", "notes"], step_rows(models)),
        "",
        "## Serving",
        "",
        *_table(
            [
                "model",
                "backend",
                "tokens/s, 1 client",
                "tokens/s, 8 clients",
                "p50 ms, 1 client",
                "peak RSS GiB",
            ],
            serve_rows(models),
        ),  # fmt: skip
        "",
        "## One exchange of the federation (tensor bytes, per node and direction)",
        "",
        *_table(
            ["model", "mode, compression", "bytes"],
            [
                [name, mode, f"{size / 1e6:,.1f} MB"]
                for name, m in models.items()
                for mode, size in m["exchange"].items()
            ],
        ),
        "",
        "## One box: serving beside the nightly round",
        "",
        "Training, evaluation and the export run one after the other in the nightly round, each "
        "beside serving; the peaks that can overlap are serving's and the largest nightly "
        "step's.",
        "",
        *plan_lines(models),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
