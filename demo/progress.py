"""What the demo prints while it runs: each box's round journal as it grows, then a summary.

Everything shown comes from the journals the ClientApps write (ids, counts, scores, bytes, ε:
never note text) and from the gRPC reply for the sample note.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from federation.journal import JournalEntry, JournalReader

_STARTED = time.monotonic()
HEARTBEAT_S = 30.0


def say(message: str) -> None:
    elapsed = int(time.monotonic() - _STARTED)
    print(f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


class _Box(Protocol):
    name: str

    @property
    def journal(self) -> Path: ...


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB"


class Progress:
    """Follows the boxes' journals; keeps per-round F1, bytes and ε for the summary."""

    def __init__(self, boxes: Sequence[_Box], rounds: int, delta: float) -> None:
        self.boxes, self.rounds, self.delta = list(boxes), rounds, delta
        self.readers = {box.name: JournalReader(box.journal) for box in self.boxes}
        self.f1: dict[int, dict[str, float]] = {}
        self.bytes_up: dict[int, dict[str, int]] = {}
        self.bytes_down: dict[int, dict[str, int]] = {}
        self.eps_by_round: dict[int, dict[str, float]] = {}  # each box's spend after round r
        self.promoted: dict[str, str] = {}
        self.last_news = time.monotonic()
        self.current_round = 0
        self.full_model_bytes = 0  # one fp32 copy of every parameter (set by the demo)

    @property
    def eps(self) -> dict[str, float]:
        """Each box's epsilon spent after the last round it completed."""
        return {n: e for r in sorted(self.eps_by_round) for n, e in self.eps_by_round[r].items()}

    def poll(self) -> None:
        """Print the journal events written since the last call (a heartbeat when quiet)."""
        news = False
        for name, reader in self.readers.items():
            for entry in reader.new_entries():
                self._show(name, entry)
                news = True
        now = time.monotonic()
        if news:
            self.last_news = now
        elif now - self.last_news > HEARTBEAT_S:
            where = f"round {self.current_round}" if self.current_round else "starting round 1"
            say(f"  ... {where} of {self.rounds} in progress")
            self.last_news = now

    def _show(self, name: str, entry: JournalEntry) -> None:
        f, r = entry.fields, int(entry.fields.get("server_round") or 0)
        if entry.event == "round_started":
            self.current_round = max(self.current_round, r)
            say(f"round {r} {name}: training on its own notes")
        elif entry.event == "round_completed":
            self.bytes_up.setdefault(r, {})[name] = int(f.get("bytes_sent", 0))
            self.bytes_down.setdefault(r, {})[name] = int(f.get("bytes_received", 0))
            eps = ""
            if "eps_spent" in f:
                self.eps_by_round.setdefault(r, {})[name] = float(f["eps_spent"])
                eps = f", epsilon spent {float(f['eps_spent']):.2f}"
                if "dp_noise" in f:
                    eps += f" (noise {float(f['dp_noise']):.2f})"
            say(
                f"round {r} {name}: trained on {f.get('num_examples')} windows, loss "
                f"{float(f.get('loss', float('nan'))):.3f}, update {_mb(f.get('bytes_sent', 0))}"
                f"{eps}"
            )
        elif entry.event == "round_declined":
            say(f"round {r} {name}: declined ({f.get('reason')})")
        elif entry.event == "promotion":
            if f.get("candidate_f1") is not None:
                self.f1.setdefault(r, {})[name] = float(f["candidate_f1"])
            if f.get("outcome") == "promoted":
                self.promoted[name] = str(f.get("version"))
            score = f.get("candidate_f1")
            shown = f"{float(score):.3f}" if score is not None else "n/a"
            say(
                f"round {r} {name}: global model F1 {shown} on its held-out notes -> "
                f"{f.get('outcome')} {f.get('version')}"
            )

    def show_note(self, text: str, entities: list[dict[str, Any]], version: str) -> None:
        say(f"entities found by model version {version}:")
        print(text, flush=True)
        for e in entities:
            print(
                f"  [{e['start']:>4}, {e['end']:>4})  {e['label']:<9} {e['score']:.2f}  "
                f"{e['text']}",
                flush=True,
            )

    def summary(self, entities: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """Print the per-round table and the totals; return them for summary.json."""
        names = [box.name for box in self.boxes]
        say("rounds (strict entity F1 of the global model on each box's held-out notes):")
        header = "  ".join(f"{n:>10}" for n in names)
        print(f"  round  {header}      mean   up+down", flush=True)
        rows: list[dict[str, Any]] = []
        total = 0
        for r in range(1, self.rounds + 1):
            scores = self.f1.get(r, {})
            moved = sum(self.bytes_up.get(r, {}).values()) + sum(
                self.bytes_down.get(r, {}).values()
            )
            mean = sum(scores.values()) / len(scores) if scores else float("nan")
            cells = "  ".join(f"{scores[n]:>10.3f}" if n in scores else f"{'-':>10}" for n in names)
            print(f"  {r:>5}  {cells}  {mean:>8.3f}  {_mb(moved):>8}", flush=True)
            rows.append({"round": r, "f1": scores, "mean_f1": mean, "bytes": moved})
            total += moved
        say(f"bytes exchanged, all boxes, both ways: {_mb(total)} (model updates only)")
        if self.full_model_bytes:
            full = 2 * len(names) * self.rounds * self.full_model_bytes
            say(f"  full-model FedAvg would have moved {full / 1e9:.1f} GB ({total / full:.2%})")
        self._privacy(names)
        say(f"done in {seconds / 60:.1f} min")
        return {
            "rounds": rows,
            "bytes_total": total,
            "epsilon_spent": self.eps,
            "epsilon_by_round": self.eps_by_round,
            "promoted": self.promoted,
            "entities": entities,
            "seconds": round(seconds, 1),
        }

    def _privacy(self, names: list[str]) -> None:
        """Each box's epsilon spent after each round (its ledger's, at the run's delta)."""
        if not self.eps:
            say("privacy spent: none accounted, DP-SGD was off (--no-dp)")
            return
        say(f"privacy spent (epsilon at delta {self.delta:g} after each round, per box):")
        print(f"  round  {'  '.join(f'{n:>10}' for n in names)}", flush=True)
        for r in range(1, self.rounds + 1):
            spent = self.eps_by_round.get(r, {})
            cells = "  ".join(f"{spent[n]:>10.2f}" if n in spent else f"{'-':>10}" for n in names)
            print(f"  {r:>5}  {cells}", flush=True)
