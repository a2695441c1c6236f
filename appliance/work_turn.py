"""The box's work turn: its two memory-heavy jobs run one after the other, never at once.

A hospital box runs serving all day and, at night, a node's federated round (training, the
held-out evaluation, the promotion step's scoring). After a promotion, serving exports the new
version to ONNX. At LLaMA 3.2-1B's size each of these peaks at 7 GB or more, so a box that ran an
export beside the next round's training would need both at once. Both take the turn first: an
exclusive `flock` on the model registry's directory, the one place serving and federation share.

The lock needs no write access (serving may read the registry only), ends when its holder closes
it or dies (a `kill -9` frees it) and is per registry, so each box has its own. Who waits: a
node's round waits for its turn, up to a bound; serving never blocks on it (`wait_s=0`) and tries
again at its next check, serving the previous version meanwhile.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a waiting holder tries again


class TurnBusy(RuntimeError):
    """The turn stayed taken for as long as the caller would wait."""


@contextmanager
def work_turn(registry: str | Path, who: str, wait_s: float) -> Iterator[None]:
    """Hold the box's work turn on `registry` for the block; `who` names the job in the log.

    Waits up to `wait_s` seconds (0: not at all) for the other job to end, then raises
    TurnBusy. The registry directory must exist."""
    if wait_s < 0:
        raise ValueError(f"wait_s must be at least 0, not {wait_s}")
    try:
        fd = os.open(registry, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise TurnBusy(f"{registry}: cannot open the registry for its work turn: {err}") from err
    try:
        _acquire(fd, Path(registry), who, wait_s)
        yield
    finally:
        os.close(fd)  # closing the descriptor ends the lock


def _acquire(fd: int, registry: Path, who: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if said:
                log.info("%s: the work turn on %s is free, going on", who, registry)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TurnBusy(
                f"{who} did not run: the box's other memory-heavy job (a node's round or "
                f"serving's export) holds the work turn (waited {wait_s:g} s) on {registry}"
            )
        if not said:
            log.info("%s waits for the work turn on %s (another job holds it)", who, registry)
            said = True
        time.sleep(min(POLL_S, left))
