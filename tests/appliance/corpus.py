"""A small synthetic annotated corpus the tiny model can learn in seconds (seeded)."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHEMICALS = ["aspirin", "cisplatin", "lithium", "heparin", "caffeine", "morphine"]
DISEASES = ["fever", "nephrotoxicity", "seizures", "hypotension", "asthma", "anemia"]
FILLER = [
    "the",
    "patient",
    "was",
    "given",
    "after",
    "with",
    "and",
    "developed",
    "mild",
    "no",
    "signs",
    "of",
    "daily",
    "dose",
    "reported",
    "later",
]


def sentence(rng: random.Random) -> tuple[str, list[dict[str, object]]]:
    words, entities, text = [], [], ""
    for _ in range(rng.randint(6, 12)):
        roll = rng.random()
        label = "Chemical" if roll < 0.15 else "Disease" if roll < 0.3 else None
        word = rng.choice(CHEMICALS if label == "Chemical" else DISEASES if label else FILLER)
        start = len(text) + (1 if text else 0)
        text = f"{text} {word}" if text else word
        words.append(word)
        if label:
            entities.append({"start": start, "end": start + len(word), "label": label})
    return text + " .", entities


def write_jsonl(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            text, entities = sentence(rng)
            handle.write(json.dumps({"id": f"s{i}", "text": text, "entities": entities}) + "\n")
    return path
