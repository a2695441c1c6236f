from serving.api import ner_pb2 as _ner_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnnotationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANNOTATION_KIND_UNSPECIFIED: _ClassVar[AnnotationKind]
    ANNOTATION_KIND_CORRECTED: _ClassVar[AnnotationKind]
    ANNOTATION_KIND_ACCEPTED: _ClassVar[AnnotationKind]
    ANNOTATION_KIND_REJECTED: _ClassVar[AnnotationKind]
ANNOTATION_KIND_UNSPECIFIED: AnnotationKind
ANNOTATION_KIND_CORRECTED: AnnotationKind
ANNOTATION_KIND_ACCEPTED: AnnotationKind
ANNOTATION_KIND_REJECTED: AnnotationKind

class AnnotatedEntity(_message.Message):
    __slots__ = ("begin", "end", "category")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    begin: int
    end: int
    category: str
    def __init__(self, begin: _Optional[int] = ..., end: _Optional[int] = ..., category: _Optional[str] = ...) -> None: ...

class SubmitAnnotationRequest(_message.Message):
    __slots__ = ("note_id", "revision", "text", "entities", "offset_unit", "annotator", "kind", "model_version")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_UNIT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    note_id: str
    revision: int
    text: str
    entities: _containers.RepeatedCompositeFieldContainer[AnnotatedEntity]
    offset_unit: _ner_pb2.OffsetUnit
    annotator: str
    kind: AnnotationKind
    model_version: str
    def __init__(self, note_id: _Optional[str] = ..., revision: _Optional[int] = ..., text: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[AnnotatedEntity, _Mapping]]] = ..., offset_unit: _Optional[_Union[_ner_pb2.OffsetUnit, str]] = ..., annotator: _Optional[str] = ..., kind: _Optional[_Union[AnnotationKind, str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SubmitAnnotationResponse(_message.Message):
    __slots__ = ("outcome", "note_id", "revision")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[SubmitAnnotationResponse.Outcome]
        OUTCOME_STORED: _ClassVar[SubmitAnnotationResponse.Outcome]
        OUTCOME_DUPLICATE: _ClassVar[SubmitAnnotationResponse.Outcome]
        OUTCOME_STALE: _ClassVar[SubmitAnnotationResponse.Outcome]
    OUTCOME_UNSPECIFIED: SubmitAnnotationResponse.Outcome
    OUTCOME_STORED: SubmitAnnotationResponse.Outcome
    OUTCOME_DUPLICATE: SubmitAnnotationResponse.Outcome
    OUTCOME_STALE: SubmitAnnotationResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    outcome: SubmitAnnotationResponse.Outcome
    note_id: str
    revision: int
    def __init__(self, outcome: _Optional[_Union[SubmitAnnotationResponse.Outcome, str]] = ..., note_id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteNoteRequest(_message.Message):
    __slots__ = ("note_id", "reason")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    note_id: str
    reason: str
    def __init__(self, note_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteNoteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class GetStoreStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStoreStatsResponse(_message.Message):
    __slots__ = ("notes", "notes_by_kind", "entities_by_category", "deletions", "changed_since_round", "bytes_on_disk")
    class NotesByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class EntitiesByCategoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NOTES_FIELD_NUMBER: _ClassVar[int]
    NOTES_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_BY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DELETIONS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SINCE_ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    notes: int
    notes_by_kind: _containers.ScalarMap[str, int]
    entities_by_category: _containers.ScalarMap[str, int]
    deletions: int
    changed_since_round: int
    bytes_on_disk: int
    def __init__(self, notes: _Optional[int] = ..., notes_by_kind: _Optional[_Mapping[str, int]] = ..., entities_by_category: _Optional[_Mapping[str, int]] = ..., deletions: _Optional[int] = ..., changed_since_round: _Optional[int] = ..., bytes_on_disk: _Optional[int] = ...) -> None: ...
