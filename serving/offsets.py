"""Convert code-point offsets (Python str indices) to UTF-16 code units or UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from serving.api import ner_pb2

CODE_POINT = ner_pb2.OFFSET_UNIT_CODE_POINT
UTF16 = ner_pb2.OFFSET_UNIT_UTF16
UTF8 = ner_pb2.OFFSET_UNIT_UTF8
UNITS: dict[int, int] = {
    ner_pb2.OFFSET_UNIT_UNSPECIFIED: CODE_POINT,
    CODE_POINT: CODE_POINT,
    UTF16: UTF16,
    UTF8: UTF8,
}


def _width(char: str, unit: int) -> int:
    if unit == UTF16:
        return 2 if ord(char) > 0xFFFF else 1
    return len(char.encode("utf-8", "surrogatepass"))


def offset_table(text: str, unit: int) -> Sequence[int]:
    """table[i] = offset of code point i in `unit`; len(text)+1 entries."""
    if unit == CODE_POINT:
        return range(len(text) + 1)
    return [0, *accumulate(_width(c, unit) for c in text)]
