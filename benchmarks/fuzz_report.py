"""Write benchmarks/results/fuzz.md from the fuzz benchmark's tallies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.fuzz_cases import EXTREMES

if TYPE_CHECKING:
    from benchmarks.fuzz import Tally

FORBIDDEN = ("INTERNAL", "UNKNOWN", "UNAVAILABLE")
SHOWN_PROBLEMS = 20


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def _answered(row: dict[str, Any], limits: dict[str, Any]) -> bool:
    return bool(row["seconds"] < limits["answer_s"] and row["code"] not in FORBIDDEN)


def _codes(counter: Any, notes: bool) -> str:
    items = sorted((k, v) for k, v in counter.items() if k.startswith("note:") == notes)
    return ", ".join(f"{k.removeprefix('note:')} {v}" for k, v in items) or "-"


def class_table(tally: Tally) -> list[str]:
    lines = [
        "| class | cases | RPC status codes | per-note codes (batch, stream) | wall s "
        "| slowest answer ms | server RSS after MB | oracle violations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for klass, cases in tally.cases.items():
        bad = sum(p.startswith(f"{klass}: ") for p in tally.problems)
        lines.append(
            f"| {klass} | {cases} | {_codes(tally.codes[klass], False)} "
            f"| {_codes(tally.codes[klass], True)} | {tally.wall_s[klass]:.1f} "
            f"| {tally.max_s[klass] * 1000:.0f} | {tally.rss_after[klass]:.0f} | {bad} |"
        )
    return lines


def extreme_table(rows: list[dict[str, Any]], context: dict[str, Any]) -> list[str]:
    limits, idle = context["limits"], context["rss"]["idle"]
    lines = [
        "| note | characters | status | seconds | RSS peak MB | RSS after MB (settled in s) "
        "| answered < 30 s | RSS back within 20% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fast = _verdict(_answered(r, limits)) if r["name"] in EXTREMES else "not judged"
        back = r["settled"] <= idle * (1 + limits["rss_slack"])
        lines.append(
            f"| {r['name']} | {r['chars']} | {r['code']} | {r['seconds']:.2f} | {r['peak']:.0f} "
            f"| {r['settled']:.0f} ({r['settle_s']:.1f}) | {fast} | {_verdict(back)} |"
        )
    return lines


def summary(rows: list[dict[str, Any]], context: dict[str, Any], tally: Tally) -> list[str]:
    rss, limits = context["rss"], context["limits"]
    forbidden = sum(
        v for c in tally.codes.values() for k, v in c.items() if k.split(":")[-1] in FORBIDDEN
    )
    forbidden += sum(r["code"] in FORBIDDEN for r in rows)
    problems = len(tally.problems) + sum(len(r["problems"]) for r in rows)
    fast = all(_answered(r, limits) for r in rows if r["name"] in EXTREMES)
    back = rss["end"] <= rss["idle"] * (1 + limits["rss_slack"])
    back = back and all(r["settled"] <= rss["idle"] * (1 + limits["rss_slack"]) for r in rows)
    total = sum(tally.cases.values()) + len(rows)
    return [
        f"- Cases: {total} ({len(rows)} extremes alone, then {sum(tally.cases.values())} "
        f"hostile and generated) in {context['wall_s']:.0f} s.",
        f"- INTERNAL / UNKNOWN / UNAVAILABLE answers: {forbidden} "
        f"({_verdict(forbidden == 0)}: zero allowed).",
        f"- Oracle violations (offsets, order, re-sent alone, health): {problems} "
        f"({_verdict(problems == 0)}).",
        f"- {' and '.join(EXTREMES)} answered within {limits['answer_s']:.0f} s: {_verdict(fast)}.",
        f"- Server RSS: idle {rss['idle']:.0f} MB, peak {rss['peak']:.0f} MB, end "
        f"{rss['end']:.0f} MB (settled in {rss['end_settle_s']:.1f} s); back within "
        f"{limits['rss_slack']:.0%} of idle after each extreme and at the end: {_verdict(back)}.",
    ]


def write_report(
    path: Path, context: dict[str, Any], rows: list[dict[str, Any]], tally: Tally
) -> Path:
    shown = [*tally.problems, *(f"{r['name']}: {p}" for r in rows for p in r["problems"])]
    lines = [
        "# Fuzz benchmark",
        "",
        f"Command: `{context['command']}`  ",
        f"Model: `{context['package_command']}` (package of the embedded SmolLM2-135M), served "
        f"by `appliance serve --backend {context['backend']}` with the default limits  ",
        f"Machine: {context['machine']}  ",
        f"Date: {context['date']}",
        "",
        *summary(rows, context, tally),
        "",
        "## The extremes, each timed alone (UTF-16 offsets)",
        "",
        *extreme_table(rows, context),
        "",
        "## Every class",
        "",
        "RPC status codes count each call; per-note codes count the results inside an OK batch "
        "or stream. Wall time includes the oracle's re-sends and health probes; the slowest "
        "answer is the judged call alone.",
        "",
        *class_table(tally),
        "",
        f"## Oracle violations (first {SHOWN_PROBLEMS})",
        "",
        *([f"- {p[:300]}" for p in shown[:SHOWN_PROBLEMS]] or ["None."]),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
