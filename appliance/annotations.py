"""Annotated notes from clinicians: their types, their validation and the train / held-out split.

An `Annotation` is one revision of a clinician's verdict on the entities the EHR showed for a note
(corrected, accepted or rejected), with code-point entity offsets. `validate_annotation` checks it
at the boundary and names the field at fault (`AnnotationError.field`); no message quotes the
note's text. `split_of` puts a note id on the train or the held-out side by a keyed hash, so a
note never changes side as revisions arrive.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, replace
from itertools import pairwise

from appliance.notes import EntitySpan, Note, NotesError
from appliance.readers import validate_entities

KINDS = ("corrected", "accepted", "rejected")
TRAINING_KINDS = ("corrected", "accepted")
TRAIN, HELDOUT = "train", "heldout"
DEFAULT_MAX_NOTE_CHARS = 100_000

MAX_NAME = 128
MAX_REASON = 1000
_MAX_INT64 = 2**63 - 1
_CONTROL = frozenset({"Cc", "Cf", "Cs"})


class AnnotationError(ValueError):
    """An annotation (or a call's argument) breaks a rule; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Annotation:
    """One revision of a clinician's annotation of a note (code-point entity offsets)."""

    note_id: str
    revision: int
    text: str
    entities: tuple[EntitySpan, ...]
    annotator: str
    kind: str
    model_version: str = ""

    @classmethod
    def of_note(cls, note: Note, revision: int, annotator: str, kind: str) -> Annotation:
        """An annotated note (`appliance.notes.Note`, e.g. read from a file) as one revision."""
        return cls(note.note_id, revision, note.text, note.entities, annotator, kind)


def split_of(note_id: str, key: bytes, heldout_fraction: float) -> str:
    """``"heldout"`` or ``"train"`` for `note_id`, from HMAC-SHA256 of the id under `key`."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    if not key:
        raise ValueError("the split key must not be empty")
    digest = hmac.new(key, note_id.encode("utf-8"), hashlib.sha256).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    return HELDOUT if point < heldout_fraction else TRAIN


# ----------------------------------------------------------------------------- validation


def check_name(field: str, value: object, limit: int, allow_empty: bool = False) -> str:
    """A short single-line string: at most `limit` characters, no control characters."""
    if not isinstance(value, str):
        raise AnnotationError(field, "must be a string")
    if not allow_empty and not value.strip():
        raise AnnotationError(field, "must not be empty or only whitespace")
    if len(value) > limit:
        raise AnnotationError(field, f"has {len(value)} characters (at most {limit})")
    for i, char in enumerate(value):
        if unicodedata.category(char) in _CONTROL:
            raise AnnotationError(field, f"control character U+{ord(char):04X} at position {i}")
    return value


def _check_revision(revision: object) -> None:
    if type(revision) is not int:
        raise AnnotationError("revision", "must be an integer")
    if not 1 <= revision <= _MAX_INT64:
        raise AnnotationError("revision", f"must be between 1 and {_MAX_INT64}, got {revision}")


def _check_text(text: object, max_chars: int) -> None:
    if not isinstance(text, str):
        raise AnnotationError("text", "must be a string")
    if not text.strip():
        raise AnnotationError("text", "must not be empty or only whitespace")
    if len(text) > max_chars:
        raise AnnotationError("text", f"has {len(text)} code points (at most {max_chars})")
    if "\x00" in text:
        raise AnnotationError("text", f"NUL character at position {text.index(chr(0))}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise AnnotationError("text", f"lone surrogate at position {err.start}") from None


def _check_entity(field: str, text: str, ent: object, labels: Collection[str] | None) -> None:
    if not isinstance(ent, EntitySpan):
        raise AnnotationError(field, "must be an EntitySpan")
    start, end = ent.start, ent.end
    if type(start) is not int or type(end) is not int:
        raise AnnotationError(field, "offsets must be integers")
    if not 0 <= start < end <= len(text):
        raise AnnotationError(
            field, f"offsets {start}-{end} out of range (text has {len(text)} code points)"
        )
    if text[start].isspace() or text[end - 1].isspace():
        raise AnnotationError(field, f"span {start}-{end} starts or ends on whitespace")
    label = check_name(f"{field}.label", ent.label, MAX_NAME)
    if labels is not None and label not in labels:
        raise AnnotationError(field, f"unknown label {label!r}")
    score = ent.score
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise AnnotationError(f"{field}.score", "must be a finite number or None")


def _check_entities(
    text: str, entities: object, labels: Collection[str] | None
) -> tuple[EntitySpan, ...]:
    if not isinstance(entities, tuple | list):
        raise AnnotationError("entities", "must be a tuple of EntitySpan")
    for i, ent in enumerate(entities):
        _check_entity(f"entities[{i}]", text, ent, labels)
    order = sorted(range(len(entities)), key=lambda i: (entities[i].start, entities[i].end))
    for prev, cur in pairwise(order):
        a, b = entities[prev], entities[cur]
        if b.start < a.end:
            raise AnnotationError(
                f"entities[{cur}]",
                f"overlaps entities[{prev}] ({a.start}-{a.end} and {b.start}-{b.end})",
            )
    try:
        return validate_entities(text, entities, labels, "annotation", 0)
    except NotesError as err:
        raise AnnotationError("entities", err.reason) from None


def validate_annotation(
    ann: Annotation,
    labels: Collection[str] | None = None,
    max_note_chars: int = DEFAULT_MAX_NOTE_CHARS,
) -> Annotation:
    """`ann` with its entities sorted, or `AnnotationError` naming the first bad field."""
    if not isinstance(ann, Annotation):
        raise AnnotationError("annotation", "must be an Annotation")
    check_name("note_id", ann.note_id, MAX_NAME)
    _check_revision(ann.revision)
    _check_text(ann.text, max_note_chars)
    check_name("annotator", ann.annotator, MAX_NAME)
    if not isinstance(ann.kind, str) or ann.kind not in KINDS:
        raise AnnotationError("kind", f"must be one of {', '.join(KINDS)}")
    check_name("model_version", ann.model_version, MAX_NAME, allow_empty=True)
    return replace(ann, entities=_check_entities(ann.text, ann.entities, labels))
