"""Markdown tables and PNG plots of the experiments (results/experiments_<letter>.md / .png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TITLES = {
    "a": "Centralized vs federated (IID, non-IID) vs each hospital alone",
    "b": "Selected layers: F1 against megabytes exchanged",
    "c": "Layer-skipping vs LoRA vs full-model FedAvg",
    "d": "Differential privacy: F1 against epsilon (delta 1e-5)",
    "e": "10 rounds vs 100 rounds with a tenth of the local steps",
    "f": "A hospital joining late with 5% of the data",
}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = [c for c in ("setting", "f1", "mb", "target_eps", "eps_spent", "noise", "declined")
               if any(c in r for r in rows)]  # fmt: skip
    heads = {"f1": "strict F1", "mb": "MB exchanged (all clients, both ways)",
             "target_eps": "target epsilon", "eps_spent": "epsilon spent (max over hospitals)",
             "noise": "noise multiplier", "declined": "declined rounds"}  # fmt: skip
    out = ["| " + " | ".join(heads.get(c, c) for c in columns) + " |"]
    out.append("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            if c == "mb" and isinstance(value, float):
                cells.append(f"{value:,.1f}")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}" if c == "f1" else f"{value:.4g}")
            else:
                cells.append("-" if value is None else str(value))
        out.append("| " + " | ".join(cells) + " |")
    per_round = [r for r in rows if r.get("f1_per_round")]
    if per_round:
        out += ["", "F1 per round:", ""]
        for r in per_round:
            scores = ", ".join(f"{x:.3f}" for x in r["f1_per_round"] if x is not None)
            out.append(f"- {r['setting']}: {scores}")
    return out


def _plot(letter: str, result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if letter in ("b", "c"):
        for r in rows:
            ax.scatter(r["mb"], r["f1"])
            ax.annotate(r["setting"], (r["mb"], r["f1"]), textcoords="offset points", xytext=(5, 5))
        ax.set_xscale("log")
        ax.set_xlabel("MB exchanged over the run (all clients, both ways; log scale)")
    elif letter == "d":
        labels = [r["setting"] for r in rows]
        ax.plot(labels, [r["f1"] for r in rows], marker="o")
        ax.set_xlabel("privacy setting")
    elif letter == "e":
        for r in rows:
            points = [(i + 1, f) for i, f in enumerate(r["f1_per_round"]) if f is not None]
            scale = 10 if r["setting"].startswith("100") else 1
            ax.plot([p[0] / scale for p in points], [p[1] for p in points], marker="o",
                    label=r["setting"])  # fmt: skip
        ax.set_xlabel("passes over the local notes (epochs)")
        ax.legend()
    else:
        ax.barh([r["setting"] for r in rows], [r["f1"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("strict entity F1 on BC5CDR test sentences")
    if letter != "a" and letter != "f":
        ax.set_ylabel("strict entity F1")
        ax.set_ylim(bottom=0, top=max(0.1, ax.get_ylim()[1]))  # differences at their true scale
    ax.set_title(TITLES[letter], fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_experiment(letter: str, result: dict[str, Any]) -> Path:
    """Write the table and the plot of one experiment; returns the markdown path."""
    png = RESULTS / f"experiments_{letter}.png"
    _plot(letter, result, png)
    settings = result["settings"]
    lines = [
        f"# Experiment {letter}: {TITLES[letter]}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}",
        "",
        f"BC5CDR: {settings['train_notes']} training sentences over 3 hospitals (Dirichlet "
        f"alpha 0.5, seed {settings['split_seed']}, unless IID), strict entity F1 (seqeval) on "
        f"the first {settings['test_notes']} test sentences; SmolLM2-135M; {settings['rounds']} "
        "rounds x 1 local epoch unless the row says otherwise. Small on purpose: 2 CPU cores.",
        "",
        *_table(result["rows"]),
        "",
        f"![{TITLES[letter]}](experiments_{letter}.png)",
    ]
    path = RESULTS / f"experiments_{letter}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
