"""benchmarks/results/privacy.md from the rows in privacy.json."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def _mean(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str, Any], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["sizes"], row["recipe"], row["eps_target"])].append(row)
    return groups


def _gap(groups: dict, sizes: str, twin: str, eps: Any, rows: list[dict[str, Any]]) -> str:
    """Mean strict F1 points lost against the no-DP run of `twin`, over the seeds both have."""
    if eps is None:
        return "-"
    twins = {r["seed"]: r["f1"] for r in groups.get((sizes, twin, None), [])}
    pairs = [(twins[r["seed"]], r["f1"]) for r in rows if r["seed"] in twins]
    if not pairs:
        return "no twin yet"
    return f"{100 * statistics.mean(a - b for a, b in pairs):.2f} ({len(pairs)} seeds)"


def _clipped(rows: list[dict[str, Any]]) -> str:
    """Mean share of per-sample gradients clipped in the first and the last round (DP rows
    measured with the statistic)."""
    shares = [r["clipped_share"] for r in rows if r.get("clipped_share")]
    if not shares or None in (shares[0][0], shares[0][-1]):
        return "-"
    first = statistics.mean(s[0] for s in shares)
    last = statistics.mean(s[-1] for s in shares)
    return f"{first:.0%} / {last:.0%}"


def table(store: dict[str, Any], twins: dict[str, str], sizes: str) -> list[str]:
    """The rows of one size (hospitals, public part, test set, rounds), one line per recipe and
    target, seeds averaged."""
    groups = _group(list(store.get("rows", {}).values()))
    lines = [
        "| recipe | epsilon target | seeds | strict F1 (mean ± sd) "
        "| F1 points lost to DP | Chemical / Disease F1 | span F1 | round-0 F1 "
        "| epsilon spent per hospital | noise | samples clipped, round 1 / last "
        "| minutes per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        (g for g in groups.items() if g[0][0] == sizes),
        key=lambda g: (g[0][1], g[0][2] is not None, g[0][2] or 0),
    )
    for (_, recipe, eps), rows in order:
        per_type = [r["per_type"] for r in rows]
        spent = sorted({round(v, 2) for r in rows for v in r["eps_spent"].values()})
        lines.append(
            f"| {recipe} | {eps if eps is not None else 'no DP'} "
            f"| {', '.join(str(r['seed']) for r in rows)} | {_mean([r['f1'] for r in rows])} "
            f"| {_gap(groups, sizes, twins.get(recipe, recipe), eps, rows)} "
            f"| {_mean([p.get('Chemical', 0.0) for p in per_type])} / "
            f"{_mean([p.get('Disease', 0.0) for p in per_type])} "
            f"| {_mean([r['span_f1'] for r in rows])} | {_mean([r['initial_f1'] for r in rows])} "
            f"| {', '.join(map(str, spent)) or '-'} | {rows[0]['noise']:.3f} "
            f"| {_clipped(rows)} | {statistics.mean(r['seconds'] for r in rows) / 60:.1f} |"
        )
    return lines


def write_report(
    store: dict[str, Any],
    recipes: dict[str, tuple[Any, int, str]],
    twins: dict[str, str],
    path: Path,
) -> None:
    rows = list(store.get("rows", {}).values())
    sizes = sorted({r["sizes"] for r in rows})
    commands = sorted({r["command"] for r in rows})
    machines = sorted({f"{r['machine']} ({r['date']})" for r in rows})
    text = [
        "# Differential privacy against accuracy (BC5CDR, 3 hospitals)",
        "",
        "Commands (from the repository root, `.venv/bin/python`):",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Machines: " + "; ".join(machines),
        "",
        "Training sentences split by Dirichlet(0.5) label "
        "skew, and hospital-0 also holds 40 synthetic canary sentences for privacy_audit.py "
        "(counted in its size); the public part is the start of the development set, which no "
        "hospital holds; "
        "strict entity F1 (seqeval) on the test set. DP: Opacus DP-SGD per hospital, Poisson "
        "sampling, per-sample clipping at 1.0 unless a recipe says otherwise (the share of "
        "sampled sentences whose gradient norm was above it is in the table), RDP accounting "
        "at delta 1e-5; the noise is set so the smallest hospital spends the target over all "
        "rounds. Round-0 F1 is the starting "
        "model's alone (the public warm start's, or the seeded start's): a DP row at or below it "
        "gained nothing from the hospitals' notes.",
        "",
        "Recipes:",
        "",
        *[f"- `{name}`: {about}" for name, (_, _, about) in recipes.items()],
        "",
    ]
    for size in sizes:
        text += [f"## {size}", "", *table(store, twins, size), ""]
    path.write_text("\n".join(text), encoding="utf-8")
