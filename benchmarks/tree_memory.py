"""Peak memory of a process and everything it starts, sampled from /proc.

GNU time's %M (ru_maxrss) is one process's peak resident set, file-backed pages included: a
memory-mapped checkpoint counts as long as its pages are resident, although the kernel can drop
them under a cgroup's memory limit. A sampled tree also sees children that run beside each other
(a SuperNode and its ClientApp) and separates anonymous memory, which must fit the limit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from demo.consortium import descendants


def status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The `keys` of /proc/`pid`/status (VmRSS, RssAnon, ...) in KB; {} when it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in keys:
            found[name] = int(value.split()[0])
    return found


def tree_kb(pid: int) -> tuple[int, int]:
    """(resident, anonymous) KB summed over `pid` and its descendants, now."""
    rss = anon = 0
    for member in (pid, *descendants(pid)):
        values = status_kb(member, ("VmRSS", "RssAnon"))
        rss += values.get("VmRSS", 0)
        anon += values.get("RssAnon", 0)
    return rss, anon


class TreePeak:
    """Samples `tree_kb(pid)` every `interval` s in a thread until `stop()`; peaks in MB, and
    when (Unix time) the anonymous peak was sampled."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.rss_mb = self.anon_mb = 0.0
        self.anon_peak_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anon = tree_kb(self.pid)
            self.rss_mb = max(self.rss_mb, rss / 1024)
            if anon / 1024 > self.anon_mb:
                self.anon_mb, self.anon_peak_at = anon / 1024, time.time()
            self._stop.wait(self.interval)

    def stop(self) -> TreePeak:
        self._stop.set()
        self._thread.join()
        return self
