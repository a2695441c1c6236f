"""Split one corpus into hospitals: IID, Dirichlet(α) label skew, quantity skew (all seeded).

Label skew uses each note's dominant entity type (the most frequent label among its gold
entities; "none" for a note without entities) as its class, and gives each class to the
hospitals in Dirichlet(α) proportions: small α, each hospital sees mostly one kind of note.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from appliance.notes import Note

SCHEMES = ("iid", "dirichlet", "quantity")


def dominant_label(note: Note) -> str:
    counts = Counter(e.label for e in note.entities)
    return min(counts, key=lambda label: (-counts[label], label)) if counts else "none"


def partition(
    notes: Sequence[Note], hospitals: int, scheme: str, alpha: float = 0.5, seed: int = 13
) -> list[list[Note]]:
    """Split `notes` over `hospitals`; every hospital gets at least one note."""
    if hospitals < 1 or hospitals > len(notes):
        raise ValueError(f"cannot split {len(notes)} notes over {hospitals} hospitals")
    if scheme not in SCHEMES:
        raise ValueError(f"partition {scheme!r}: choose one of {list(SCHEMES)}")
    if scheme != "iid" and alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(notes))
    if scheme == "iid":
        parts = np.array_split(order, hospitals)
    elif scheme == "quantity":
        shares = rng.dirichlet([alpha] * hospitals)
        parts = _cut(order, shares)
    else:
        parts = _label_skew(notes, order, hospitals, alpha, rng)
    parts = _no_empty(parts)
    return [[notes[i] for i in sorted(part)] for part in parts]


def _cut(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    bounds = (np.cumsum(shares)[:-1] * len(indices)).round().astype(int)
    return list(np.split(indices, bounds))


def _label_skew(
    notes: Sequence[Note], order: np.ndarray, hospitals: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class: dict[str, list[int]] = {}
    for i in order:
        by_class.setdefault(dominant_label(notes[i]), []).append(int(i))
    parts: list[list[int]] = [[] for _ in range(hospitals)]
    for label in sorted(by_class):
        members = np.array(by_class[label])
        for h, chunk in enumerate(_cut(members, rng.dirichlet([alpha] * hospitals))):
            parts[h].extend(chunk.tolist())
    return [np.array(p, dtype=int) for p in parts]


def _no_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Move one note from the largest part into each empty one."""
    lists = [list(p) for p in parts]
    for part in lists:
        if not part:
            donor = max(lists, key=len)
            part.append(donor.pop())
    return [np.array(p, dtype=int) for p in lists]
