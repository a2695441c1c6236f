"""The C heap of the serving process: give its free pages back to the OS, and say how big it is.

The serving unit runs under jemalloc where the box has it (LD_PRELOAD, see the Ansible role's
allocator settings), else under glibc's malloc. Each has its own calls: jemalloc's
`mallctl("arena.<all>.purge")` and `stats.*`, glibc's `malloc_trim` and `mallinfo2`. glibc's
`malloc_trim` does nothing for memory that jemalloc manages, so the allocator in use is found
from the process's own symbols (`mallctl` exists only when jemalloc is loaded).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@lru_cache(maxsize=1)
def _process() -> ctypes.CDLL:
    """The process's own symbols: jemalloc's when it is preloaded, glibc's in any case (found
    once: the heap is trimmed whenever the serving queue empties)."""
    process = ctypes.CDLL(None)
    if hasattr(process, "mallinfo2"):
        process.mallinfo2.restype = _MallInfo2
    return process


@lru_cache(maxsize=1)
def allocator() -> str:
    """ "jemalloc", "glibc" or "unknown": the malloc this process runs on."""
    if hasattr(_process(), "mallctl"):
        return "jemalloc"
    if hasattr(_process(), "mallinfo2"):
        return "glibc"
    return "unknown"


def trim() -> bool:
    """Return the heap's free pages to the OS now; False where the allocator has no such call."""
    try:
        if allocator() == "jemalloc":
            purge = f"arena.{_ALL_ARENAS}.purge".encode()
            return _process().mallctl(purge, None, None, None, ctypes.c_size_t(0)) == 0
        if allocator() == "glibc":
            return bool(_process().malloc_trim(0))
    except (OSError, AttributeError):
        pass
    return False


def _jemalloc_stat(name: str) -> int:
    value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
    code = _process().mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0)
    if code:
        raise OSError(code, f"mallctl {name}")
    return int(value.value)


def stats() -> dict[str, int]:
    """Bytes the program holds (`allocated`) and, under jemalloc, the heap keeps resident
    (`resident`: allocated plus the allocator's free and metadata pages); {} where unknown.
    Python's own small-object arenas and memory-mapped files are outside both."""
    try:
        if allocator() == "jemalloc":
            epoch = ctypes.c_uint64(1)  # refreshes the cached statistics
            size = ctypes.c_size_t(ctypes.sizeof(epoch))
            _process().mallctl(b"epoch", None, None, ctypes.byref(epoch), size)
            return {
                "allocated": _jemalloc_stat("stats.allocated"),
                "resident": _jemalloc_stat("stats.resident"),
            }
        if allocator() == "glibc":
            info = _process().mallinfo2()
            return {"allocated": info.uordblks + info.hblkhd}  # its free chunks may be trimmed
    except (OSError, AttributeError):
        pass
    return {}
