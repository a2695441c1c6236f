"""Clinical notes and their entity annotations: the types every other module speaks."""

from __future__ import annotations

from dataclasses import dataclass, field

WordSpan = tuple[int, int]


@dataclass(frozen=True)
class EntitySpan:
    """A labelled half-open character span ``[start, end)`` into a note's text."""

    start: int
    end: int
    label: str
    score: float | None = None


@dataclass(frozen=True)
class Note:
    """One clinical note: its original text and (for training data) gold entities.

    ``words`` holds pre-tokenized word spans when the source already fixed them (CoNLL/IOB);
    otherwise the windowing step tokenizes the text with spaCy.
    ``source`` is ``"path:line"`` of the record, for error messages and reports (never the text).
    """

    note_id: str
    text: str
    entities: tuple[EntitySpan, ...] = ()
    words: tuple[WordSpan, ...] | None = None
    source: str = ""


@dataclass(frozen=True)
class SkippedRecord:
    """A record that ``--skip-bad`` left out, with where and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: skipped: {self.reason}"


class NotesError(ValueError):
    """Malformed input, located at ``path:line``."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass
class ReadResult:
    """Notes read from one or more files, plus every record skipped in ``skip_bad`` mode."""

    notes: list[Note] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.notes.extend(other.notes)
        self.skipped.extend(other.skipped)
