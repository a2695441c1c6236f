"""What the privacy benchmark and the privacy audit share: the corpus split into hospitals and a
public part, the consortium's public warm start, and scoring through the frozen prefix's cache.

Hospitals hold the 4,560 BC5CDR training sentences (Dirichlet label skew); the public part is
taken from the development set, which no hospital holds; scores are on all 4,797 test
sentences. Layer-skipping keeps the first layers frozen, so their states for a set of notes are
computed once (`appliance.cache.PrefixCache`, shared by every run) and each score or per-note
loss runs only the trained top layers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.cache import PrefixCache
from appliance.config import ApplianceConfig
from appliance.decoding import assemble
from appliance.encoding import EncodedWindow
from appliance.evaluation import evaluate_predictions, word_tags
from appliance.inference import window_log_probs
from appliance.notes import EntitySpan, Note
from appliance.readers import read_notes
from benchmarks.recipes import plain_changes
from federation.config import FederationConfig, without_dp
from federation.daemon_config import LEDGER_FILE
from federation.partition import partition
from federation.privacy import PrivacyLedger
from federation.task import HospitalNode
from federation.warm_start import SETTINGS, make_warm_start

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bc5cdr"
Arrays = dict[str, np.ndarray]


CANARY_TEMPLATE = "After the second dose of {} the patient developed severe hepatotoxicity ."
SYLLABLES = ("zor", "vex", "qui", "lam", "tra", "pex", "nol", "dri", "ba", "fen", "mu", "xi")
CANARIES = 8  # planted once each, and as many again planted 4 times each
CANDIDATES = 1000  # never planted: the ranking an exposure is measured against


def canary(index: int) -> Note:
    """The `index`-th synthetic note: a made-up drug name (one per index) in one template,
    tagged Chemical, and its disease tagged Disease."""
    code = int(np.random.default_rng(2026).permutation(len(SYLLABLES) ** 5)[index])
    digits = [code // len(SYLLABLES) ** k % len(SYLLABLES) for k in range(5)]
    name = "".join(SYLLABLES[d] for d in digits) + "ine"  # distinct for distinct indices
    text = CANARY_TEMPLATE.format(name)
    start, disease = text.index(name), text.index("hepatotoxicity")
    entities = (
        EntitySpan(start, start + len(name), "Chemical"),
        EntitySpan(disease, disease + len("hepatotoxicity"), "Disease"),
    )
    return Note(f"canary-{index}", text, entities, source=f"canary:{index}")


def planted() -> list[Note]:
    """The canaries hospital-0 holds: 0..7 once, 8..15 four times each."""
    once = [canary(i) for i in range(CANARIES)]
    return once + [canary(i) for i in range(CANARIES, 2 * CANARIES) for _ in range(4)]


def candidates() -> list[Note]:
    """Canaries of the same template that no hospital holds."""
    return [canary(i) for i in range(2 * CANARIES, 2 * CANARIES + CANDIDATES)]


def add_corpus_args(parser: argparse.ArgumentParser) -> None:
    """The options that fix a run's data and rounds: the benchmark and its audit share them,
    so an audit finds the rows it was given the same options as."""
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--public", type=int, default=1000, help="public dev sentences")
    parser.add_argument("--split-seed", type=int, default=8)
    parser.add_argument("--train", type=int, default=0, help="first N training sentences (0 all)")
    parser.add_argument("--test", type=int, default=0, help="first N test sentences (0 all)")
    parser.add_argument("--state-dir", type=Path, default=Path(ApplianceConfig().state_dir))


def share_prefix_cache(shared: Path, node_dirs: Sequence[Path]) -> None:
    """Point every node's frozen-prefix cache (`<node dir>/activations`) at one folder shared by
    every row: the same base and frozen layers give the same states."""
    shared.mkdir(parents=True, exist_ok=True)
    for node_dir in node_dirs:
        link = node_dir / "activations"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(shared, target_is_directory=True)


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Strict entity F1 overall and per type, and character-span F1, of `evaluate_predictions`."""
    strict, span = metrics["entity_strict"], metrics["span_exact"]
    return {
        "f1": float(strict["overall"]["f1"]),
        "span_f1": float(span["overall"]["f1"]),
        "per_type": {k: float(v["f1"]) for k, v in strict.items() if k != "overall"},
    }


@dataclass
class Corpus:
    """`hospitals[0]` ends with the planted canaries (`planted()`); `members` are its real
    notes, the ones a membership attack tries to tell from unseen test notes."""

    hospitals: list[list[Note]]
    public: list[Note]
    test: list[Note]
    split_seed: int
    members: list[Note]
    pool: list[Note]  # development sentences after the public part: the shadow models' data

    @property
    def tag(self) -> str:
        """A short name of these sizes and this split, for files made from them."""
        sizes = "-".join(str(len(p)) for p in self.hospitals)
        return f"h{sizes}-p{len(self.public)}-t{len(self.test)}-s{self.split_seed}"

    def sizes(self, rounds: int) -> str:
        """The sizes a privacy row is filed under (its key's and its `sizes` field's end)."""
        hospitals, public, test = [len(p) for p in self.hospitals], len(self.public), len(self.test)
        return f"hospitals {hospitals} public {public} test {test} rounds {rounds}"

    @classmethod
    def load(cls, public: int, split_seed: int, train: int = 0, test: int = 0) -> Corpus:
        """All training sentences (or the first `train`) over 3 hospitals, the first `public`
        development sentences as the public part, all test sentences (or the first `test`)."""
        train_notes = read_notes(str(DATA / "train.tsv")).notes
        dev = read_notes(str(DATA / "devel.tsv")).notes
        test_notes = read_notes(str(DATA / "test.tsv")).notes
        train_notes = train_notes[:train] if train else train_notes
        parts = partition(train_notes, 3, "dirichlet", alpha=0.5, seed=split_seed)
        members = parts[0]
        parts[0] = [*members, *planted()]
        test_notes = test_notes[:test] if test else test_notes
        return cls(parts, dev[:public], test_notes, split_seed, members, dev[public:])


class Scorer:
    """Scores and per-note losses of a node's model on fixed note sets, with the frozen
    prefix's states computed once per set (on disk under `cache_dir`, and kept in memory)."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._states: dict[str, tuple[list[EncodedWindow], list[torch.Tensor]]] = {}
        self.last: dict[str, Any] = {}
        self.scores: list[dict[str, Any]] = []  # every score taken, in order

    def _windows(
        self, node: HospitalNode, notes: Sequence[Note]
    ) -> tuple[list[EncodedWindow], list[torch.Tensor]]:
        key = hashlib.sha256("\n".join(n.text for n in notes).encode()).hexdigest()
        if key not in self._states:
            windows = node.trainer.encode(notes)
            cache = PrefixCache(node.loaded, node.selection.first, self.cache_dir)
            self._states[key] = (windows, cache.states(windows)[0])
        return self._states[key]

    def _log_probs(
        self, node: HospitalNode, arrays: Mapping[str, np.ndarray], notes: Sequence[Note]
    ) -> tuple[list[EncodedWindow], list[np.ndarray]]:
        node.set_arrays(arrays)
        windows, states = self._windows(node, notes)
        first = node.selection.first
        return windows, window_log_probs(node.loaded, windows, states, first, batch_size=64)

    def __call__(
        self, node: HospitalNode, arrays: Mapping[str, np.ndarray], notes: Sequence[Note]
    ) -> float:
        """Strict entity F1 (`federation.simulation`'s scorer); the full metrics in `last`."""
        windows, log_probs = self._log_probs(node, arrays, notes)
        predictions = assemble(len(notes), windows, log_probs, node.loaded.labels)
        self.last = summary(evaluate_predictions(notes, predictions))
        self.scores.append(self.last)
        return self.last["f1"]

    def losses(
        self, node: HospitalNode, arrays: Mapping[str, np.ndarray], notes: Sequence[Note]
    ) -> np.ndarray:
        """Each note's mean negative log-likelihood of its gold word tags (an attack's signal)."""
        windows, log_probs = self._log_probs(node, arrays, notes)
        tags = {t: i for i, t in enumerate(node.loaded.labels)}
        total, words = np.zeros(len(notes)), np.zeros(len(notes))
        for w, lp in zip(windows, log_probs, strict=True):
            note = notes[w.note_index]
            core = [w.window.words[j] for j in w.core_words]
            gold = word_tags(core, note.entities)
            picked = lp[np.arange(len(gold)), [tags[t] for t in gold]]
            total[w.note_index] -= float(picked.sum())
            words[w.note_index] += len(gold)
        return total / np.maximum(words, 1)


def warm_start(
    cfg: FederationConfig, public: Sequence[Note], epochs: int, state_dir: Path, bases: Path
) -> Arrays:
    """The consortium's round-0 model (`federation.warm_start`) trained on `public` for
    `epochs`, batch 16, cached as .npz by its settings."""
    public_cfg = without_dp(  # a DP row and its no-DP twin share their warm start
        cfg, local_epochs=epochs, batch_size=16, rounds=1, compression="none"
    )
    # keyed by the settings that differ from the plain recipe: new fields keep the key
    changed = plain_changes(public_cfg)
    settings = json.dumps([repr(changed), len(public), public[0].text if public else ""])
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    path = state_dir / f"warm-{key}.npz"
    if not path.exists():
        make_warm_start(cfg, public, epochs, path, bases, batch_size=16)
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != SETTINGS}


class RoundCheckpoint:
    """A benchmark row's progress after each round (the global model, the rounds' records, the
    seconds spent), so a row cut short resumes at its next round in a later invocation; the
    hospitals' privacy ledgers stay in their state dirs beside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta_path = directory / "checkpoint.json"

    def load(self) -> tuple[int, Arrays | None, dict[str, Any]]:
        """(rounds done, the global model after them, meta), or (0, None, fresh meta)."""
        if not self.meta_path.exists():
            return 0, None, {"records": [], "seconds": 0.0, "initial": None}
        meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        with np.load(self.directory / meta["arrays"]) as data:
            arrays = {k: data[k] for k in data.files}
        return len(meta["records"]), arrays, meta

    def save(self, meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """The model after `meta`'s rounds in a file of its own, then the meta naming it: a
        row cut between the two resumes from the previous pair."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"global-{len(meta['records'])}.npz"
        tmp = self.directory / f"{name}.tmp.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(self.directory / name)
        tmp_meta = self.meta_path.with_suffix(".tmp")
        tmp_meta.write_text(json.dumps(meta | {"arrays": name}), encoding="utf-8")
        tmp_meta.replace(self.meta_path)
        for old in self.directory.glob("global-*.npz"):
            if old.name != name:
                old.unlink()


def trim_ledgers(run_dir: Path, rounds_done: int) -> None:
    """Keep in each hospital's ledger only the rounds a checkpoint holds (a row cut short
    mid-round may have committed the next one at some hospitals); none for a fresh row."""
    for path in run_dir.glob(f"*/{LEDGER_FILE}"):
        if rounds_done == 0:
            path.unlink()
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        ledger = PrivacyLedger.open(path, raw["epsilon_budget"], raw["delta"])
        keep = [i for i, r in enumerate(ledger.rounds) if r["round"] <= rounds_done]
        ledger.rounds = [ledger.rounds[i] for i in keep]
        ledger.history = [ledger.history[i] for i in keep]
        ledger.save()
