"""Write benchmarks/results/serving.{md,json} from the serving benchmark's measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINE = "transformers-pipeline-fp32"
REFERENCE = "torch-fp32"


def _by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["system"]: r for r in results}


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | concurrency | tokens/s | notes/s | p50 ms | p99 ms | peak RSS MB | strict F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for c, run in r["runs"].items():
            lines.append(
                f"| {r['system']} | {c} | {run['tokens_per_s']:.0f} | {run['notes_per_s']:.2f} | "
                f"{run['p50_ms']:.0f} | {run['p99_ms']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['strict_f1']:.4f} |"
            )
    return lines


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Each backend against the pipeline (speed) and torch-fp32 (F1, memory), same run."""
    named = _by_name(results)
    if BASELINE not in named or REFERENCE not in named:
        return []
    base, ref = named[BASELINE], named[REFERENCE]
    concurrency = list(base["runs"])
    head = " | ".join(f"tokens/s vs pipeline, c={c}" for c in concurrency)
    lines = [
        f"| system | {head} | F1 - torch-fp32 (points) | peak RSS / torch-fp32 |",
        "|---|" + "---|" * (len(concurrency) + 2),
    ]
    for r in results:
        if r["system"] == BASELINE:
            continue
        speed = " | ".join(
            f"{r['runs'][c]['tokens_per_s'] / base['runs'][c]['tokens_per_s']:.2f}x"
            for c in concurrency
        )
        f1 = (r["strict_f1"] - ref["strict_f1"]) * 100
        rss = r["peak_rss_mb"] / ref["peak_rss_mb"]
        lines.append(f"| {r['system']} | {speed} | {f1:+.2f} | {rss:.2f} |")
    return lines


def targets(results: list[dict[str, Any]], system: str) -> list[str]:
    """The serving targets for `system`: >= 2x the pipeline, within 0.5 F1, <= 0.4x RSS."""
    named = _by_name(results)
    if system not in named or BASELINE not in named or REFERENCE not in named:
        return []
    r, base, ref = named[system], named[BASELINE], named[REFERENCE]
    best = min(r["runs"][c]["tokens_per_s"] / base["runs"][c]["tokens_per_s"] for c in base["runs"])
    checks = [
        (f"tokens/s >= 2x the pipeline at every concurrency (worst {best:.2f}x)", best >= 2),
        (
            f"strict F1 within 0.5 point of torch-fp32 "
            f"({(r['strict_f1'] - ref['strict_f1']) * 100:+.2f})",
            abs(r["strict_f1"] - ref["strict_f1"]) <= 0.005,
        ),
        (
            f"peak RSS <= 0.4x torch-fp32 ({r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x)",
            r["peak_rss_mb"] <= 0.4 * ref["peak_rss_mb"],
        ),
    ]
    return [f"- {system}: {text}: **{'met' if ok else 'NOT met'}**" for text, ok in checks]


def write_report(root: Path, context: dict[str, Any], results: list[dict[str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "serving.json").write_text(
        json.dumps({"context": context, "results": results}, indent=2), encoding="utf-8"
    )
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{context['command']}`  ",
        f"Model: `{context['package_command']}` (package of the embedded SmolLM2-135M)  ",
        f"Machine: {context['machine']}  ",
        f"Date: {context['date']}  ",
        f"Serving environment (the serving unit's): {context.get('environment', 'not recorded')}",
        "",
        f"{context['notes']} notes of about 500 tokens ({context['note_tokens']} tokens in all) "
        "built from consecutive BC5CDR test sentences. Each system ran in its own process, one "
        "after the other, on the same notes. Our backends sit behind the real gRPC server "
        "(`appliance serve`, dynamic batching, token budget 1024, 5 ms queue delay), called "
        "over loopback by c client threads; the baseline is transformers' "
        '`pipeline("token-classification", aggregation_strategy="simple")` in fp32, called '
        "with `batch_size=c`. tokens/s counts the notes' own tokens (our window context is "
        "overhead we pay). Strict F1 is seqeval IOB2 on words, from the c=1 outputs.",
        "",
        *table(results),
        "",
        "Side by side (same run):",
        "",
        *ratios(results),
        "",
        "Serving targets:",
        "",
        *targets(results, "onnx-int4"),
        *targets(results, "onnx-int8"),
        "",
    ]
    (root / "serving.md").write_text("\n".join(lines), encoding="utf-8")
