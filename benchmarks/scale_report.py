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
    anon = _gib(run["anon_mb"]) if run.get("anon_mb") else "-"
    return [f"{run['seconds']:.0f}", _gib(run["peak_mb"]), anon, status]


def _speed(row: dict[str, Any]) -> str:
    return f"{row['tokens_per_s']:.1f} tokens/s" if "tokens_per_s" in row else ""


TRAININGS = (
    ("train", "train top:8 layers, frozen part fp32"),
    ("train-nf4", "train top:8 layers, frozen part NF4"),
    ("train-nf4-adafactor", "train top:8 layers, frozen part NF4, Adafactor"),
    ("lora", "LoRA r=8 on top:8, frozen part fp32"),
    ("lora-nf4", "LoRA r=8 on top:8, frozen part NF4"),
)


def step_rows(models: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in models.items():
        rows.append([name, "load the base (fp32)", *_run_cells(m["load"]), ""])
        for key, label in TRAININGS:
            if key in m:
                rows.append([name, label, *_run_cells(m[key]["run"]), _speed(m[key])])
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


def round_rows(models: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in models.items():
        for spec, r in m.get("rounds", {}).items():
            for node, n in r["nodes"].items():
                done = n["round"] or {}
                sent, got = done.get("bytes_sent"), done.get("bytes_received")
                rows.append(
                    [
                        name,
                        spec,
                        "ok" if r["ok"] else f"{r['status']}",
                        f"{r['seconds']:.0f}",
                        node,
                        f"{sent / 1e6:,.1f}" if sent else "-",
                        f"{got / 1e6:,.1f}" if got else "-",
                        _gib(n["peak_rss_mb"]),
                        _gib(n["peak_anon_mb"]),
                        n.get("peak_during", "-"),
                        _gib(r["superlink_peak_rss_mb"]),
                        _gib(r.get("superlink_peak_anon_mb") or r["superlink_peak_rss_mb"]),
                    ]
                )
    return rows


def _peaks(run: dict[str, Any]) -> tuple[float, float]:
    return run["peak_mb"], run.get("anon_mb") or run["peak_mb"]


def _node_peak(m: dict[str, Any]) -> tuple[str, float, float]:
    """The largest hospital-side peak of the night: a node in a measured round (training and
    the held-out evaluation, as the ClientApp runs them), else the CLI training."""
    rounds = [(spec, n) for spec, r in m.get("rounds", {}).items() if r["ok"]
              for n in r["nodes"].values()]  # fmt: skip
    if rounds:
        spec, node = max(rounds, key=lambda sn: sn[1]["peak_anon_mb"])
        return f"a node's round ({spec})", node["peak_rss_mb"], node["peak_anon_mb"]
    rss, anon = _peaks(m["train"]["run"])
    return "training (top:8, frozen fp32)", rss, anon


def plan_lines(models: dict[str, Any]) -> list[str]:
    out = []
    for name, m in models.items():
        if not m["serve"]:
            out.append(f"- {name}: no serving backend measured in this run (`--backends`), no plan")
            continue
        backend = SERVING_BACKEND if SERVING_BACKEND in m["serve"] else next(iter(m["serve"]))
        serving = m["serve"][backend]["peak_rss_mb"]
        export_rss, export_anon = _peaks(m["export"][backend]["run"])
        step, node_rss, node_anon = _node_peak(m)
        exporting = (serving + export_anon) * 2**20 / GIB
        training = (2 * serving + node_anon) * 2**20 / GIB
        anon = max(exporting, training)
        verdict = "met" if anon <= PLAN_GIB else "**NOT met**"
        # MB: every layer and the embedding are quantized (the fp32 head is under 0.001%)
        quantized_fp32 = m["parameters"] * 4 / 2**20
        ratio = export_rss / quantized_fp32
        out.append(
            f"- {name}: serving ({backend}) {_gib(serving)} GiB + its export "
            f"{_gib(export_anon)} GiB anonymous ({_gib(export_rss)} resident) = "
            f"{exporting:.2f} GiB; serving with two versions {_gib(2 * serving)} GiB + {step} "
            f"{_gib(node_anon)} GiB anonymous ({_gib(node_rss)} resident) = {training:.2f} GiB; "
            f"the larger, {anon:.2f} GiB, against {PLAN_GIB:.0f} GiB: {verdict}. Without the "
            f"work turn all three would add up to "
            f"{(serving + export_anon + node_anon) * 2**20 / GIB:.2f} GiB. The export's "
            f"resident peak is {ratio:.2f}x the fp32 size of what it quantizes "
            f"({_gib(quantized_fp32)} GiB; target <= 2x)."
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
        "nightly round runs), AdamW unless the row names Adafactor; the layers rows are "
        "`appliance train`, the LoRA rows (rank 8) a hospital's node as the ClientApp loads it "
        "(benchmarks/scale_federation.py). Serving: "
        f"{r['args']['serve_notes']} notes of about 500 tokens over the real gRPC server, "
        "tokens/s of the notes' own tokens.",
        "",
        "## Steps",
        "",
        *_table(
            ["model", "step", "seconds", "peak RSS GiB", "peak anonymous GiB", "status", "notes"],
            step_rows(models),
        ),
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
        "## One federated round, as deployed",
        "",
        "A TLS SuperLink and two SuperNodes on this machine, one round of `top:8`, "
        f"{r['args'].get('round_notes', '?')} training and {r['args'].get('round_heldout', '?')} "
        "held-out BC5CDR sentences per node; the frozen part as `frozen-quantization = auto` "
        "loads it (NF4 at the 1B size). A node's peak is its SuperNode and the ClientApp it "
        "starts (training, the held-out evaluation, the promotion), sampled from /proc; bytes "
        "are the node's own count of the tensors it sent and received.",
        "",
        *_table(
            [
                "model",
                "mode+compression",
                "status",
                "seconds",
                "node",
                "sent MB",
                "received MB",
                "node peak RSS GiB",
                "node peak anonymous GiB",
                "node peak during",
                "SuperLink+ServerApp peak GiB",
                "SuperLink+ServerApp peak anonymous GiB",
            ],
            round_rows(models),
        ),  # fmt: skip
        "",
        "## One box: serving beside the nightly round",
        "",
        "A node promotes the model of each round and serving then exports it, but the two "
        "take the box's work turn (appliance/work_turn.py): a node loads, trains, evaluates "
        "and promotes in it, serving exports in it, so an export never runs beside a round. "
        "What can overlap is serving beside its export, or serving holding two versions (the "
        "exported one loads beside the old) beside a node's round. Resident peaks count the "
        "pages of memory-mapped checkpoints, which the kernel drops under a cgroup limit "
        "instead of killing; what must fit is the anonymous memory, the verdict's measure.",
        "",
        *plan_lines(models),
        "",
    ]
    if r.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in r["notes"]), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
