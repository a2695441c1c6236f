"""The serving process's C heap: which allocator runs it, its size, and giving pages back."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JEMALLOC = Path(f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2")
PROBE = """
import json, numpy as np
from serving import heap
before = heap.stats()
block = np.ones(64 << 20, np.uint8)
during = heap.stats()
del block
print(json.dumps([heap.allocator(), before, during, heap.trim(), heap.stats()]))
"""


def _probe(env: dict[str, str]) -> list:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="Python runs on another C library")
def test_glibc_heap_counts_a_large_block_and_trims():
    # a fresh process, so that no thread left by another test frees memory between the readings
    name, before, during, trimmed, after = _probe({"PATH": ""})
    assert name == "glibc" and isinstance(trimmed, bool)
    assert during["allocated"] >= before["allocated"] + (64 << 20)
    assert after["allocated"] < before["allocated"] + (1 << 20)


@pytest.mark.skipif(not JEMALLOC.is_file(), reason="jemalloc is not installed")
def test_jemalloc_heap_is_found_measured_and_purged():
    name, before, during, purged, after = _probe({"LD_PRELOAD": str(JEMALLOC), "PATH": ""})
    assert name == "jemalloc" and purged is True
    assert during["allocated"] >= before["allocated"] + (64 << 20)
    assert during["resident"] >= during["allocated"]
    assert after["allocated"] < before["allocated"] + (1 << 20)
    assert after["resident"] < during["resident"] - (32 << 20)  # the freed block went back
