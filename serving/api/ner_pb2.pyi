from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OffsetUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFSET_UNIT_UNSPECIFIED: _ClassVar[OffsetUnit]
    OFFSET_UNIT_CODE_POINT: _ClassVar[OffsetUnit]
    OFFSET_UNIT_UTF16: _ClassVar[OffsetUnit]
    OFFSET_UNIT_UTF8: _ClassVar[OffsetUnit]
OFFSET_UNIT_UNSPECIFIED: OffsetUnit
OFFSET_UNIT_CODE_POINT: OffsetUnit
OFFSET_UNIT_UTF16: OffsetUnit
OFFSET_UNIT_UTF8: OffsetUnit

class AnalyzeRequest(_message.Message):
    __slots__ = ("note_id", "text", "offset_unit", "categories", "include_text")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_UNIT_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    note_id: str
    text: str
    offset_unit: OffsetUnit
    categories: _containers.RepeatedScalarFieldContainer[str]
    include_text: bool
    def __init__(self, note_id: _Optional[str] = ..., text: _Optional[str] = ..., offset_unit: _Optional[_Union[OffsetUnit, str]] = ..., categories: _Optional[_Iterable[str]] = ..., include_text: _Optional[bool] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("id", "begin", "end", "category", "score", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    begin: int
    end: int
    category: str
    score: float
    text: str
    def __init__(self, id: _Optional[str] = ..., begin: _Optional[int] = ..., end: _Optional[int] = ..., category: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "tokenize_ms", "infer_ms", "post_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_MS_FIELD_NUMBER: _ClassVar[int]
    INFER_MS_FIELD_NUMBER: _ClassVar[int]
    POST_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    tokenize_ms: float
    infer_ms: float
    post_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., tokenize_ms: _Optional[float] = ..., infer_ms: _Optional[float] = ..., post_ms: _Optional[float] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("note_id", "entities", "model_version", "token_count", "windows", "timings", "offset_unit")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_UNIT_FIELD_NUMBER: _ClassVar[int]
    note_id: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    model_version: str
    token_count: int
    windows: int
    timings: Timings
    offset_unit: OffsetUnit
    def __init__(self, note_id: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., model_version: _Optional[str] = ..., token_count: _Optional[int] = ..., windows: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., offset_unit: _Optional[_Union[OffsetUnit, str]] = ...) -> None: ...

class AnalyzeBatchRequest(_message.Message):
    __slots__ = ("notes",)
    NOTES_FIELD_NUMBER: _ClassVar[int]
    notes: _containers.RepeatedCompositeFieldContainer[AnalyzeRequest]
    def __init__(self, notes: _Optional[_Iterable[_Union[AnalyzeRequest, _Mapping]]] = ...) -> None: ...

class NoteResult(_message.Message):
    __slots__ = ("code", "message", "response", "note_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response: AnalyzeResponse
    note_id: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response: _Optional[_Union[AnalyzeResponse, _Mapping]] = ..., note_id: _Optional[str] = ...) -> None: ...

class AnalyzeBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NoteResult]
    def __init__(self, results: _Optional[_Iterable[_Union[NoteResult, _Mapping]]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_note_chars", "max_batch_notes", "max_queue", "token_budget", "max_queue_delay_ms", "max_request_tokens", "max_queue_tokens")
    MAX_NOTE_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_NOTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_note_chars: int
    max_batch_notes: int
    max_queue: int
    token_budget: int
    max_queue_delay_ms: float
    max_request_tokens: int
    max_queue_tokens: int
    def __init__(self, max_note_chars: _Optional[int] = ..., max_batch_notes: _Optional[int] = ..., max_queue: _Optional[int] = ..., token_budget: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., max_request_tokens: _Optional[int] = ..., max_queue_tokens: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_id", "model_version", "fingerprint", "backend", "quantization", "categories", "labels", "limits")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    fingerprint: str
    backend: str
    quantization: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., fingerprint: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...
