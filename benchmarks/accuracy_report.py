"""benchmarks/results/accuracy.md from the rows in accuracy.json (`benchmarks/accuracy.py`)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

# Published full-test-set figures of the tools a hospital would otherwise install (strict entity
# F1 on BC5CDR); quoted for comparison, not measured here.
REFERENCES = (
    ("scispaCy `en_ner_bc5cdr_md`", 0.843),
    ("Spark NLP clinical NER", 0.897),
    ("BioBERT-class encoders", "0.88-0.90"),
)


def _row_cells(row: dict[str, Any]) -> str:
    types = row["per_type"]
    per_epoch = statistics.median(row["epoch_s"]) if row["epoch_s"] else 0.0
    return (
        f"| {row['recipe']} | {row['seed']} | {len(row['dev_f1'])} / {row['schedule_epochs']} "
        f"({row['best_epoch']}) | "
        f"{row['best_dev_f1']:.4f} | **{row['f1']:.4f}** | {types.get('Chemical', 0):.4f} | "
        f"{types.get('Disease', 0):.4f} | {row['span_f1']:.4f} | {per_epoch:.0f} | "
        f"{row['trainable']:,} | {row['exchange_mb']:.1f} | {row['peak_rss_gb']:.1f} |"
    )


def _curve(rows: list[dict[str, Any]]) -> list[str]:
    by_recipe: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:  # one line per recipe and schedule length
        label = f"{row['recipe']}, {row['schedule_epochs']}-epoch schedule"
        by_recipe[label][row["train_notes"]].append(row["f1"])
    sizes = sorted({n for points in by_recipe.values() for n in points})
    if len(sizes) < 2:
        return []
    lines = ["", "## Learning curve", "",
             "Strict F1 on the test set against training sentences (mean over seeds).", "",
             "| recipe | " + " | ".join(f"{n:,}" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]  # fmt: skip
    for recipe, points in by_recipe.items():
        cells = [f"{sum(points[n]) / len(points[n]):.4f}" if n in points else "" for n in sizes]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return lines


def render(store: dict[str, Any]) -> str:
    rows = list(store.get("rows", {}).values())
    full = [r for r in rows if r["train_notes"] == max(x["train_notes"] for x in rows)]
    lines = [
        "# Accuracy at full data: the embedded SmolLM2-135M on all of BC5CDR",
        "",
        "`benchmarks/accuracy.py`: each row trains one recipe centrally on BC5CDR's training "
        "sentences, keeps the epoch with the best strict F1 on all 4,581 development sentences "
        "(early stopping) and scores all 4,797 test sentences; the learning rate warms up and "
        "decays to zero over the scheduled epochs (training stops earlier after 2 epochs "
        "without a gain on the development set). Seconds are the median training seconds "
        "of an epoch on one process (an epoch slowed by other work on the machine, or paused "
        "and resumed, does not move the median; every epoch's seconds are in accuracy.json); "
        "MB per exchange is what one federated exchange of the trained tensors carries in "
        "fp32; peak RSS is the benchmark process's peak so far. Span F1 "
        "matches character offsets and type exactly on the raw text: it equals strict entity "
        "F1 here because every BC5CDR entity is made of whole words.",
        "",
        "| recipe | seed | epochs run / scheduled (best) | dev F1 | test strict F1 | Chemical "
        "| Disease | span F1 | s / epoch | trained parameters | MB / exchange | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row_cells(r) for r in sorted(full, key=lambda r: -r["f1"])),
        "",
        "| recipe | what trains |",
        "|---|---|",
        *sorted({f"| {r['recipe']} | {r['about']} |" for r in rows}),
        *_curve(rows),
        "",
        "## For comparison (published, not measured here)",
        "",
        *(f"- {name}: {value} strict F1 on the BC5CDR test set" for name, value in REFERENCES),
        "",
        "## Runs",
        "",
    ]
    for key, row in store.get("rows", {}).items():
        lines.append(f"- {key}: `{row['command']}`, {row['machine']}, {row['date']}, "
                     f"{row['train_notes']:,} training sentences, wall {row['wall_s'] / 60:.0f} "
                     f"min in its last invocation, test scoring {row['test_s']:.0f} s; dev F1 by "
                     f"epoch {row['dev_f1']}, train loss {row['losses']}")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(store: dict[str, Any], path: Path) -> None:
    path.write_text(render(store), encoding="utf-8")
