"""Write annotated notes back to disk: CoNLL (one `word<TAB>tag` line per word), e.g. for shards.

Only notes with fixed word spans (read from CoNLL/IOB) can be written: their gold entities are
re-expressed as IOB tags on those words, so `read_conll(write_conll(notes))` gives the same
notes (text, words and entities).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from appliance.notes import Note


def iob_tags(note: Note) -> list[str]:
    """One IOB tag per word of `note` (its entities must start and end on word edges)."""
    if note.words is None:
        raise ValueError(f"{note.source or note.note_id}: note has no word spans to tag")
    tags = ["O"] * len(note.words)
    starts = {start: i for i, (start, _) in enumerate(note.words)}
    ends = {end: i for i, (_, end) in enumerate(note.words)}
    for entity in note.entities:
        first, last = starts.get(entity.start), ends.get(entity.end)
        if first is None or last is None:
            raise ValueError(
                f"{note.source or note.note_id}: entity [{entity.start}, {entity.end}) "
                "does not start and end on word boundaries"
            )
        tags[first] = f"B-{entity.label}"
        for i in range(first + 1, last + 1):
            tags[i] = f"I-{entity.label}"
    return tags


def write_conll(notes: Sequence[Note], path: str | Path) -> Path:
    """Write `notes` as CoNLL sentences separated by blank lines; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    blocks = []
    for note in notes:
        tags = iob_tags(note)
        assert note.words is not None  # checked by iob_tags
        rows = [f"{note.text[s:e]}\t{tag}" for (s, e), tag in zip(note.words, tags, strict=True)]
        blocks.append("\n".join(rows))
    target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return target
