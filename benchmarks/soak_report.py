"""benchmarks/results/soak.md from the soak's raw records (benchmarks/soak.py)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.soak_analysis import (
    LoadSummary,
    SoakRecord,
    hostile_rows,
    inconsistent,
    kill_report,
    rest_heap,
    rest_rss,
    restart_times,
    rss_rows,
    rss_timeline,
    summarize,
    swap_rows,
    swap_rss,
    swaps_counted,
)

RSS_TARGET = 0.05


def machine() -> str:
    """lscpu's model name, cores, memory, the runtime versions."""
    import onnxruntime

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        "unknown CPU",
    )
    mem_kb = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal:")
    )
    return (
        f"{model}, {os.cpu_count()} cores, {mem_kb / 1024**2:.1f} GiB memory, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def ms(pair: tuple[float, float]) -> tuple[str, str]:
    return tuple("n/a" if math.isnan(v) else f"{v:.0f}" for v in pair)  # type: ignore[return-value]


def status_section(s: LoadSummary) -> list[str]:
    codes = sorted({c for counter in s.codes.values() for c in counter})
    rows = [[g, sum(s.codes[g].values()), *(s.codes[g][c] for c in codes)] for g in sorted(s.codes)]
    out = ["Final status of each request (after retries):", ""]
    out += table(["notes", "requests", *codes], rows)
    attempts = ", ".join(f"{c} {n}" for c, n in s.attempts.most_common())
    return out + ["", f"All attempts, retries included: {attempts}."]


def latency_section(s: LoadSummary) -> list[str]:
    rows = [
        [g, sum(s.codes[g].values()), s.codes[g]["OK"], *ms(v)] for g, v in s.ok_p50_p99.items()
    ]
    out = table(["notes", "requests", "OK", "p50 ms", "p99 ms"], rows)
    p50, p99 = ms(s.last_attempt_p50_p99)
    return out + [
        "",
        f"End to end, retries and backoff included. The answered attempt alone (clinical): "
        f"p50 {p50} ms, p99 {p99} ms. Clinical tokens answered: {s.tokens_per_s:.0f}/s.",
    ]


def failures_section(s: LoadSummary, limit: int = 20) -> list[str]:
    if not s.failures:
        return [
            "None: every request got a deliberate answer, and every OK answer passed the checks."
        ]
    rows = [[o.key, o.unit, f"{o.started:.1f}", len(o.attempts), why] for o, why in s.failures]
    out = table(["note", "unit", "sent at s", "attempts", "why"], rows[:limit])
    return out + (["", f"... and {len(rows) - limit} more."] if len(rows) > limit else [])


def kill_section(r: SoakRecord, t0: float) -> list[str]:
    out = []
    for pid, at in r.kills:
        k = kill_report(r.soak.outcomes, at - t0)
        back, loaded = restart_times(at, r.lives, r.samples)
        first = k["first_ok_after_s"]
        out += [
            f"- SIGKILL to pid {pid} at {at - t0:.1f} s. The supervisor's new process started "
            f"{_s(back)} later; its model was loaded {_s(loaded)} after the kill; the first OK "
            f"answer to an attempt made after the kill arrived {_s(first)} after it.",
            f"- In flight at the kill: {k['in_flight']} requests; the attempt the kill cut got "
            f"{_counts(k['hit_attempt_codes'])}; retries they needed (retries: requests): "
            f"{_counts(k['retries'])}; final status: {_counts(k['final'])}; "
            f"lost (no deliberate answer or wrong): {k['lost']}.",
            f"- Requests that needed at least one retry over the whole soak: "
            f"{k['retried_requests']}.",
        ]
    return out or ["- No kill in this run (--kill-at not set)."]


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _anon_growth(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    return f" (anonymous memory: {after / before - 1:+.1%})"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _counts(counter: Any) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items())) or "none"


def rest_section(r: SoakRecord, t0: float) -> tuple[list[str], list[tuple[str, float]]]:
    """RSS with no load (after warm-up, after the soak) and the growth between the two."""
    at_rest = {name: rest_rss(r.samples, window) for name, window in r.rests.items()}
    heaps = {name: rest_heap(r.samples, window) for name, window in r.rests.items()}
    body = [
        [name, f"{r.rests[name][0] - t0:.0f}", str(v[0]), f"{v[1]:.0f}", _mb(v[2])]
        + [_mb(heaps[name].get(state)) for state in ("allocated", "resident")]
        for name, v in at_rest.items()
        if v is not None
    ]
    head = ["when", "from soak s", "pid", "RSS MB", "anonymous MB"]
    head += ["C heap allocated MB", "C heap resident MB"]
    before, after = at_rest.get("after warm-up"), at_rest.get("after the soak")
    if before is None or after is None:
        return table(head, body), []
    who = "same process" if before[0] == after[0] else "the restarted process vs the first"
    growth = after[1] / before[1] - 1
    lines = table(head, body)
    lines += [
        "",
        f"Growth at rest, after the soak vs after warm-up ({who}): {growth:+.1%}"
        f"{_anon_growth(before[2], after[2])}. Each is the median of the samples in the second "
        f"half of {r.args.rest_s:.0f} s without load.",
    ]
    return lines, [(f"at rest ({who})", growth)]


def rss_section(r: SoakRecord, t0: float) -> tuple[list[str], list[tuple[str, float]]]:
    warmup = r.args.rss_warmup_s
    rows = rss_rows(r.lives, r.samples, t0, r.soak_end, warmup)
    growths = [(f"pid {row['pid']}", row["end"] / row["warm"] - 1) for row in rows if row["warm"]]
    if len(rows) > 1 and rows[0]["warm"]:
        growths.append(
            ("end of the soak vs the first process", rows[-1]["end"] / rows[0]["warm"] - 1)
        )
    body = [
        [
            row["pid"],
            f"{row['from_s']:.0f}-{row['to_s']:.0f}",
            f"{row['ready']:.0f}",
            "n/a" if row["warm"] is None else f"{row['warm']:.0f}",
            f"{row['peak']:.0f}",
            f"{row['end']:.0f}",
            "n/a" if row["warm"] is None else f"{(row['end'] / row['warm'] - 1) * 100:+.1f}%",
        ]
        for row in rows
    ]
    header = ["pid", "soak s", "model loaded", f"after {warmup:.0f} s", "peak", "end", "growth"]
    return table(header, body), growths


def swap_section(r: SoakRecord, t0: float) -> list[str]:
    header = ["version", "promoted at s", "served from s", "lag s", "first sent at s", "OK answers"]
    out = table(header, swap_rows(r.soak.outcomes, r.promotions, r.samples, t0))
    lives = swaps_counted(r.lives, r.samples)
    hot = sum(life["swaps"] for life in lives) - len(lives)
    out += [
        "",
        '"Served from" is the first second the exporter\'s appliance_ner_model_info showed the '
        'version; "first sent" is when the earliest request it answered was sent (the answer '
        f"came one request time later). Hot swaps counted by the exporter: {hot} of "
        f"{len(r.promotions)} promotions:",
        "",
    ]
    for life in lives:
        out.append(
            f"- pid {life['pid']}: appliance_ner_model_swaps {life['swaps']} (its first load "
            f"counts as one), swap failures {life['failures']}; served "
            f"{', '.join(life['served']) or 'nothing'}."
        )
    header = ["version", "before promotion", "peak (to 15 s after served)", "settled"]
    out += ["", "RSS of the serving process around each swap (MB):", ""]
    rows = swap_rss(r.samples, r.promotions, r.soak_end)
    out += table(header, [[v, *(f"{mb:.0f}" for mb in rss)] for v, *rss in rows])
    return out + [
        "",
        '"Settled" is the last sample before the next promotion (or the end of the soak); a '
        "swap across the kill is left out.",
    ]


def compare_section(r: SoakRecord) -> list[str]:
    runs = r.compare
    if not runs:
        return ["Not run (--compare-minutes 0)."]
    rows = []
    for name, run in runs.items():
        s = summarize(run.outcomes, run.seconds)
        p50, p99 = ms(s.ok_p50_p99.get("clinical", (math.nan, math.nan)))
        rows.append([name, s.requests, p50, p99, f"{s.tokens_per_s:.0f}", len(s.failures)])
    out = table(["box", "requests", "p50 ms", "p99 ms", "clinical tokens/s", "failed"], rows)
    n = runs["nightly"]
    share = n.train_cpu_s / max(1e-9, n.train_cpu_s + n.serve_cpu_s)
    return out + [
        "",
        f"The soak's load ({r.args.clients} clients, same note mix) for "
        f"{r.args.compare_minutes:g} min each, on the same serving process right after the "
        "soak, without swaps or kills; latency is end to end of the clinical notes' OK answers.",
        "",
        f"Nightly stand-in: `{n.command}`, started {r.args.train_warmup_s:.0f} s before the "
        f"load (it had used {n.train_cpu_before_s:.0f} CPU-s by then, loading the base and "
        f"the notes, then training). During the load it used {n.train_cpu_s:.0f} CPU-s "
        f"against serving's {n.serve_cpu_s:.0f} ({share:.0%} of the two); still training at the "
        "end: " + ("yes." if n.train_running else "NO (it ended early: the comparison is void)."),
    ]


def setup_section(r: SoakRecord) -> list[str]:
    a, limits = r.args, r.limits
    sizes = [c.tokens for c in r.clinical]
    classes = sorted({h.klass for h in r.hostile})
    return [
        f"Command: `{r.command}`  ",
        f"Machine: {r.machine}  ",
        f"Date: {r.date}  ",
        f"Serving: `{r.serve_command}` (backend {a.backend}, registry-following, defaults "
        f"otherwise: max_request_tokens {limits.max_request_tokens}, max_note_chars "
        f"{limits.max_note_chars}), under the script's supervisor (Restart=always, "
        f"RestartSec=1), environment as the serving unit's: "
        f"{' '.join(f'{k}={v}' for k, v in r.serving_env.items()) or 'not recorded'}.  ",
        f"Model: `{r.package_command}` -- a quick package of the embedded SmolLM2-135M (one "
        "epoch, 1000 sentences): the soak measures serving, not F1. The hot-swapped versions are "
        "copies with the classification head multiplied by (1 + 0.05 N(0,1)), seeded: distinct "
        "weights, the same network and cost.",
        "",
        f"Load: {a.clients} closed-loop client threads for {a.minutes:g} min, each with its own "
        f"channel; {1 - a.hostile_share:.0%} clinical notes ({len(sizes)} notes of "
        f"{min(sizes)}-{max(sizes)} model tokens packed from consecutive BC5CDR test sentences by "
        f"benchmarks/serving.py's build_notes, sent with a random offset unit) and "
        f"{a.hostile_share:.0%} hostile notes ({len(r.hostile)} cases of the fuzz corpus, "
        f"classes {', '.join(classes)}; a class is drawn uniformly, then one of its cases). "
        "A client retries UNAVAILABLE and RESOURCE_EXHAUSTED "
        '"retry later" with exponential backoff (0.1 s doubling to 5 s, jittered) and '
        "wait_for_ready, until 600 s have passed. Versions promoted at "
        f"{', '.join(f'{f:.0%}' for f in a.swap_at)} of the soak, SIGKILL at "
        f"{'none' if a.kill_at is None else f'{a.kill_at:.0%}'}.",
        "",
        f"The ONNX exports of all {len(r.exports)} versions were made (or found in "
        f"`{a.state_dir}/exports`, cached by content key by `ensure_export`) before the load "
        f"started ({r.prepare_s:.0f} s including the package): a swap or a restart during the "
        "soak only loads an ONNX file; the export itself is not part of what was measured.",
        "",
        "A failure is a request that never got a deliberate answer (OK, INVALID_ARGUMENT, "
        "RESOURCE_EXHAUSTED), got INTERNAL, or got a wrong answer: a status its note's class does "
        "not allow (clinical notes: OK only; hostile: what the serving contract predicts, "
        "benchmarks/fuzz_cases.py), a refusal message that does not name the limit, an unknown "
        "model_version, or entities failing the fuzz oracle's checks (inside the text, in order, "
        "on character boundaries, text equal to the slice).",
    ]


def notes_section(
    r: SoakRecord, s: LoadSummary, growths: list[tuple[str, float]], rest: list[tuple[str, float]]
) -> list[str]:
    notes = []
    if s.failures:
        notes.append(f"{len(s.failures)} failed requests (see Failures).")
    if rest:
        verdict = "met" if max(g for _, g in rest) <= RSS_TARGET else "**NOT met**"
        said = "; ".join(f"{who} {g:+.1%}" for who, g in rest)
        notes.append(
            f"RSS growth over the soak, at rest after it vs at rest after warm-up (target <= "
            f"{RSS_TARGET:.0%}): {verdict}: {said}."
        )
    if growths:
        said = "; ".join(f"{who} {g:+.1%}" for who, g in growths)
        notes.append(
            "Under load, RSS also holds the activations of the requests in flight (up to "
            "max_queue_tokens of them), so it moves with the queue: end vs "
            f"{r.args.rss_warmup_s:.0f} s into each process's soak: {said}."
        )
    swaps = swap_rss(r.samples, r.promotions, r.soak_end)
    if any(settled - before > RSS_TARGET * before for _, before, _, settled in swaps):
        said = ", ".join(f"{v} {settled - before:+.0f} MB" for v, before, _, settled in swaps)
        notes.append(
            "RSS did not come back after hot swaps while the load went on (settled minus before "
            f"the promotion: {said}; see Hot swaps)."
        )
    groups, varied = inconsistent(r.soak.outcomes)
    notes.append(
        f"The same clinical note, offset unit and model version got differing entity spans in "
        f"{varied} of {groups} cases (counted as information, not failures; "
        "benchmarks/results/serving_windows.md measures why a backend's answer can depend on "
        "its batch)."
    )
    notes.append(
        "The nightly run is `nice -n 19` standing in for systemd's CPUWeight=50 (federation) vs "
        "1000 (serving): nice 19 weighs 15 against 1024, about 1:68 rather than 1:20, so it yields "
        "more than the cgroup weights would. Both run from this script's session, so the kernel's "
        "autogroup scheduling does not hide the nice value."
    )
    return [f"- {n}" for n in notes]


def write_report(path: Path, r: SoakRecord, extra_notes: Sequence[str] = ()) -> None:
    t0 = r.soak.t0
    seconds = r.soak.seconds
    s = summarize(r.soak.outcomes, seconds)
    rss, growths = rss_section(r, t0)
    rest, rest_growths = rest_section(r, t0)
    allowed: dict[str, set[str]] = {}
    for h in r.hostile:
        allowed.setdefault(h.klass, set()).update(c.name for c in h.expect.codes)
    expected = {k: "/".join(sorted(v)) for k, v in allowed.items()}
    lines = ["# Soak and fault benchmark of NER serving", "", *setup_section(r), ""]
    lines += [f"## Soak ({seconds:.0f} s, {s.requests} requests)", "", *status_section(s), ""]
    lines += ["Latency of OK answers:", "", *latency_section(s), ""]
    lines += ["## Failures", "", *failures_section(s), ""]
    lines += ["## Hostile notes", ""]
    header = ["class", "sent", "final statuses", "allowed", "failed", "p50 ms"]
    lines += [*table(header, hostile_rows(r.soak.outcomes, expected)), ""]
    lines += ["## Kill -9", "", *kill_section(r, t0), ""]
    lines += ["## Hot swaps", "", *swap_section(r, t0), ""]
    lines += ["## RSS of the serving process (MB, VmRSS sampled each second)", ""]
    lines += ["At rest (no load):", "", *rest, "", "Under load, per process:", "", *rss, ""]
    header = ["soak s", "pid", "serving version", "RSS MB", "queue tokens"]
    timeline = rss_timeline(r.samples, t0, r.soak_end)
    lines += ["Over time:", "", *table(header, timeline), ""]
    lines += ["## Idle box vs a nightly training run", "", *compare_section(r), ""]
    notes = [*notes_section(r, s, growths, rest_growths), *(f"- {n}" for n in extra_notes)]
    lines += ["## Notes", "", *notes, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
