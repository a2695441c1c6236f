"""Markdown tables and PNG plots of the experiments (results/experiments_<letter>.md / .png)."""

from __future__ import annotations

import textwrap
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
    "g": "A sentence-level task beside NER: does the sentence state a chemical-induced disease?",
}
RULE = (
    "Sentence label (appliance/sentence_task.py): positive when the sentence has a Chemical and a "
    "Disease mention (gold annotations) and a causal cue word (case-insensitive regex `{cue}`). "
    "F1, precision and recall of the positive class (scikit-learn); the classifier is the token "
    "classifier's two-way head read at the sentence's last word, trained on `top:8` like the NER "
    "model."
)


def _table(rows: list[dict[str, Any]], f1_name: str = "strict F1") -> list[str]:
    columns = [c for c in ("setting", "f1", "precision", "recall", "accuracy", "mb", "target_eps",
                           "eps_spent", "noise", "declined")
               if any(c in r for r in rows)]  # fmt: skip
    heads = {"f1": f1_name, "mb": "MB exchanged (all clients, both ways)",
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
                cells.append(f"{value:.4f}" if c in ("f1", "precision", "recall", "accuracy")
                             else f"{value:.4g}")  # fmt: skip
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
        shown = [r for r in rows if r.get("plot", True)]
        ax.plot([r["setting"] for r in shown], [r["f1"] for r in shown], marker="o")
        ax.tick_params(axis="x", labelsize=8)
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
        ax.set_xlabel(_f1_name(letter) + " on BC5CDR test sentences")
    if letter not in ("a", "f", "g"):
        ax.set_ylabel(_f1_name(letter))
        ax.set_ylim(bottom=0, top=max(0.1, ax.get_ylim()[1]))  # differences at their true scale
    fig.suptitle(textwrap.fill(TITLES[letter], 70), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f1_name(letter: str) -> str:
    return "F1 of the positive class" if letter == "g" else "strict entity F1"


def _sizes(letter: str, result: dict[str, Any]) -> str:
    settings = result["settings"]
    split = (f"{settings['train_notes']} training sentences over 3 hospitals (Dirichlet alpha "
             f"0.5, seed {settings['split_seed']}, unless IID)")  # fmt: skip
    common = (f"SmolLM2-135M; {settings['rounds']} rounds x 1 local epoch unless the row says "
              "otherwise. Small on purpose: 2 CPU cores.")  # fmt: skip
    if letter == "g":
        from appliance.sentence_task import CAUSAL_CUE  # torch: only when g is written

        rule = RULE.format(cue=CAUSAL_CUE.pattern)
        return (f"BC5CDR: {split}; the first {settings['test_notes']} test sentences, "
                f"{result['positives']} of them positive ({result['train_positives']} of the "
                f"training sentences). {rule} {common}")  # fmt: skip
    return (f"BC5CDR: {split}, strict entity F1 (seqeval) on the first "
            f"{settings['test_notes']} test sentences; {common}")  # fmt: skip


def write_experiment(letter: str, result: dict[str, Any]) -> Path:
    """Write the table and the plot of one experiment; returns the markdown path."""
    png = RESULTS / f"experiments_{letter}.png"
    _plot(letter, result, png)
    lines = [
        f"# Experiment {letter}: {TITLES[letter]}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}",
        "",
        _sizes(letter, result),
        "",
        *_table(result["rows"], "F1 (positive class)" if letter == "g" else "strict F1"),
        "",
        f"![{TITLES[letter]}](experiments_{letter}.png)",
    ]
    path = RESULTS / f"experiments_{letter}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
