"""The soak's numbers from its raw records: statuses, latency, failures, the kill, swaps, RSS."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fuzz_cases import Limits
from benchmarks.soak_load import Item, Outcome
from benchmarks.soak_server import HEAP, Life, Sample

DELIBERATE = ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
SWAPS = "appliance_ner_model_swaps_total"
SWAP_FAILURES = "appliance_ner_model_swap_failures_total"
QUEUE_TOKENS = "appliance_ner_queue_tokens"


@dataclass
class Phase:
    """One stretch of load: its outcomes, and for the nightly one, the CPU each side got."""

    t0: float
    seconds: float
    outcomes: list[Outcome]
    train_cpu_before_s: float = 0.0  # what the training had used when the load started
    train_cpu_s: float = 0.0
    serve_cpu_s: float = 0.0
    train_running: bool = False
    command: str = ""


@dataclass
class SoakRecord:
    """Everything the report is written from (times on the monotonic clock)."""

    args: argparse.Namespace
    package_command: str
    serve_command: str
    prepare_s: float
    exports: list[Path]
    clinical: list[Item]
    hostile: list[Item]
    limits: Limits
    soak: Phase
    promotions: list[tuple[str, float]]
    kills: list[tuple[int, float]]
    lives: list[Life]
    samples: list[Sample]
    compare: dict[str, Phase] = field(default_factory=dict)
    rests: dict[str, tuple[float, float]] = field(default_factory=dict)  # no load: (from, to)
    serving_env: dict[str, str] = field(default_factory=dict)  # what the server ran with
    command: str = ""
    machine: str = ""
    date: str = ""

    @property
    def soak_end(self) -> float:
        return self.soak.t0 + self.soak.seconds


def group(o: Outcome) -> str:
    return "clinical" if o.klass == "clinical" else "hostile"


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in ms of values in seconds; NaN when there are none."""
    if not values:
        return float("nan"), float("nan")
    ms = np.array(values) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def failure(o: Outcome) -> str | None:
    """Why `o` failed (None: it did not): no deliberate answer, INTERNAL, or a wrong answer."""
    if o.code == "INTERNAL":
        return "INTERNAL"
    if o.code not in DELIBERATE:
        return f"no deliberate answer (last status {o.code})"
    if o.problems:
        return "wrong answer: " + "; ".join(o.problems)
    return None


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    codes: dict[str, Counter[str]]  # group -> final status -> count
    attempts: Counter[str]
    ok_p50_p99: dict[str, tuple[float, float]]  # group -> end-to-end ms of OK answers
    last_attempt_p50_p99: tuple[float, float]  # clinical OK, the answered attempt alone
    tokens_per_s: float  # clinical note tokens answered OK per second
    failures: list[tuple[Outcome, str]]


def summarize(outcomes: Sequence[Outcome], seconds: float) -> LoadSummary:
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        codes[group(o)][o.code] += 1
    ok = {g: [o for o in outcomes if group(o) == g and o.code == "OK"] for g in codes}
    clinical = ok.get("clinical", [])
    failed = [(o, why) for o in outcomes if (why := failure(o)) is not None]
    return LoadSummary(
        requests=len(outcomes),
        codes=dict(codes),
        attempts=Counter(a[0] for o in outcomes for a in o.attempts),
        ok_p50_p99={g: percentiles([o.ended - o.started for o in v]) for g, v in ok.items()},
        last_attempt_p50_p99=percentiles([o.last_attempt_s for o in clinical]),
        tokens_per_s=sum(o.tokens for o in clinical) / seconds,
        failures=failed,
    )


def hostile_rows(outcomes: Sequence[Outcome], expected: dict[str, str]) -> list[list[str]]:
    """Per hostile class: sent, final statuses, allowed statuses, failures, p50 ms."""
    by_class: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if group(o) == "hostile":
            by_class[o.klass].append(o)
    rows = []
    for klass in sorted(by_class):
        done = by_class[klass]
        codes = Counter(o.code for o in done)
        p50, _ = percentiles([o.ended - o.started for o in done])
        rows.append(
            [
                klass,
                str(len(done)),
                ", ".join(f"{c} {n}" for c, n in codes.most_common()),
                expected.get(klass, "?"),
                str(sum(failure(o) is not None for o in done)),
                f"{p50:.0f}",
            ]
        )
    return rows


def inconsistent(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """(groups, groups with more than one distinct answer): the same clinical note, offset unit
    and model version should always get the same entity spans."""
    answers: dict[tuple[str, str, str], set[tuple[Any, ...]]] = defaultdict(set)
    for o in outcomes:
        if o.code == "OK" and group(o) == "clinical":
            answers[(o.key, o.unit, o.version)].add(o.spans)
    return len(answers), sum(len(s) > 1 for s in answers.values())


def kill_report(outcomes: Sequence[Outcome], kill_at: float) -> dict[str, Any]:
    """The requests in flight at the kill (relative time `kill_at`), their retries and fate; when
    the process was back, its model loaded, and the first OK answer after the kill."""
    in_flight = [o for o in outcomes if o.started < kill_at < o.ended]
    hit = [next((a for a in o.attempts if a[1] <= kill_at <= a[2]), None) for o in in_flight]
    after = [o.ended for o in outcomes if o.code == "OK" and o.attempts[-1][1] > kill_at]
    return {
        "in_flight": len(in_flight),
        "hit_attempt_codes": Counter(a[0] for a in hit if a is not None),
        "retries": Counter(len(o.attempts) - 1 for o in in_flight),
        "final": Counter(o.code for o in in_flight),
        "lost": sum(failure(o) is not None for o in in_flight),
        "first_ok_after_s": (min(after) - kill_at) if after else None,
        "retried_requests": sum(len(o.attempts) > 1 for o in outcomes),
    }


def restart_times(
    kill_time: float, lives: Sequence[Life], samples: Sequence[Sample]
) -> tuple[float | None, float | None]:
    """Seconds from the kill to the new process, and to its first sample with a model loaded."""
    new = next((life for life in lives if life.started > kill_time), None)
    if new is None:
        return None, None
    loaded = [s.at for s in samples if s.pid == new.pid and s.metrics.get(SWAPS, 0) >= 1]
    return new.started - kill_time, (min(loaded) - kill_time) if loaded else None


def swap_rows(
    outcomes: Sequence[Outcome],
    promotions: Sequence[tuple[str, float]],
    samples: Sequence[Sample],
    t0: float,
) -> list[list[str]]:
    """Per promoted version: promoted, first served (the exporter's model info, sampled each
    second), first request sent that it answered, OK answers carrying it."""
    rows = []
    for version, at in promotions:
        served = [s.at - t0 for s in samples if s.version == version]
        sent = [o.attempts[-1][1] for o in outcomes if o.code == "OK" and o.version == version]
        rows.append(
            [
                version,
                f"{at - t0:.1f}",
                f"{min(served):.1f}" if served else "never",
                f"{min(served) - (at - t0):.1f}" if served else "n/a",
                f"{min(sent):.1f}" if sent else "never",
                str(len(sent)),
            ]
        )
    return rows


def swaps_counted(lives: Sequence[Life], samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Per process life: the highest swap and swap-failure counts seen (the first load counts
    as a swap) and the versions it served, in order."""
    out = []
    for life in lives:
        own = [s for s in samples if s.pid == life.pid]
        served: list[str] = []
        for sample in own:
            if sample.version and sample.version not in served:
                served.append(sample.version)
        out.append(
            {
                "pid": life.pid,
                "swaps": int(max((s.metrics.get(SWAPS, 0) for s in own), default=0)),
                "failures": int(max((s.metrics.get(SWAP_FAILURES, 0) for s in own), default=0)),
                "served": served,
            }
        )
    return out


def rss_timeline(
    samples: Sequence[Sample], start: float, end: float, points: int = 11
) -> list[list[str]]:
    """RSS at evenly spaced moments of the soak (the nearest sample): time, pid, version, MB."""
    during = [s for s in samples if start <= s.at <= end]
    rows = []
    for k in range(points):
        at = start + (end - start) * k / (points - 1)
        if during:
            s = min(during, key=lambda x: abs(x.at - at))
            queued = s.metrics.get(QUEUE_TOKENS)
            tokens = "n/a" if queued is None else f"{queued:.0f}"
            version = s.version or "(exporter did not answer)"
            rows.append([f"{s.at - start:.0f}", str(s.pid), version, f"{s.rss_mb:.0f}", tokens])
    return rows


def rss_rows(
    lives: Sequence[Life], samples: Sequence[Sample], start: float, end: float, warmup_s: float
) -> list[dict[str, Any]]:
    """Per process life during the soak: RSS (MB) before load, after warm-up, peak, at its end."""
    rows = []
    for life in lives:
        own = [s for s in samples if s.pid == life.pid and s.at <= end]
        during = [s for s in own if s.at >= start]
        if not during:
            continue
        base_at = max(start, life.started) + warmup_s
        warm = next((s for s in during if s.at >= base_at), None)
        before = [s for s in own if s.at < start and s.metrics.get(SWAPS, 0) >= 1]
        ready = before[-1] if before else next((s for s in own if s.metrics.get(SWAPS)), own[0])
        rows.append(
            {
                "pid": life.pid,
                "from_s": max(start, life.started) - start,
                "to_s": during[-1].at - start,
                "ready": ready.rss_mb,
                "warm": warm.rss_mb if warm else None,
                "peak": max(s.rss_mb for s in during),
                "end": during[-1].rss_mb,
            }
        )
    return rows


def _at_rest(samples: Sequence[Sample], window: tuple[float, float]) -> list[Sample]:
    """The samples of the second half of a window without load, once the server has released
    what the last requests used."""
    start, end = window
    return [s for s in samples if (start + end) / 2 <= s.at <= end]


def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def rest_rss(
    samples: Sequence[Sample], window: tuple[float, float]
) -> tuple[int, float, float | None] | None:
    """(pid, median RSS MB, median anonymous MB or None where not sampled) at rest in `window`
    (`_at_rest`); None without samples there."""
    late = _at_rest(samples, window)
    if not late:
        return None
    anon = [s.anon_mb for s in late if s.anon_mb is not None]
    return late[-1].pid, _median([s.rss_mb for s in late]), _median(anon) if anon else None


def rest_heap(samples: Sequence[Sample], window: tuple[float, float]) -> dict[str, float]:
    """Median C heap MB by state (allocated, resident) at rest in `window`, as the server's
    exporter reported it ({} where it did not)."""
    found: dict[str, list[float]] = {}
    for sample in _at_rest(samples, window):
        for name, value in sample.metrics.items():
            if name.startswith(f"{HEAP}:"):
                found.setdefault(name.split(":", 1)[1], []).append(value / 2**20)
    return {state: _median(values) for state, values in found.items()}


def swap_rss(
    samples: Sequence[Sample],
    promotions: Sequence[tuple[str, float]],
    end: float,
    window_s: float = 15.0,
) -> list[tuple[str, float, float, float]]:
    """Per promotion served by the process that was running when it was promoted: RSS (MB) just
    before it, the highest until `window_s` after the new version served (both sessions are
    alive while it loads), and the last sample before the next promotion or the soak's end."""
    rows = []
    for k, (version, at) in enumerate(promotions):
        until = promotions[k + 1][1] if k + 1 < len(promotions) else end
        before = [s for s in samples if s.at < at]
        served = [s for s in samples if s.version == version and at <= s.at <= until]
        if not before or not served or served[0].pid != before[-1].pid:
            continue  # not served before the next promotion, or the process restarted between
        own = [s for s in samples if s.pid == before[-1].pid and at <= s.at <= until]
        peak = max(s.rss_mb for s in own if s.at <= served[0].at + window_s)
        rows.append((version, before[-1].rss_mb, peak, own[-1].rss_mb))
    return rows
