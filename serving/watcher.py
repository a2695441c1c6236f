"""Follow the registry's `current` pointer: load and smoke-check a new version, then swap it in.

A version that fails (unreadable or damaged package, failed export, failed smoke check) is logged
once with the reason, counted in `appliance_ner_model_swap_failures` (and a failed ONNX export in
`appliance_ner_export_failures` by reason), and not tried again by this process.

A version that needs an ONNX export while the node's round holds the box's work turn
(`appliance.work_turn`) is not a failure: it is tried again at the next check, and the previous
version serves meanwhile; by then `current` may have moved on, and only the newest is exported.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from appliance.registry import ModelRegistry, RegistryError
from appliance.work_turn import TurnBusy
from serving.backends.onnx_export import ExportError
from serving.engine import Engine, ServedModel, load_served_model

log = logging.getLogger(__name__)


class ModelWatcher:
    """Polls the registry; a version that fails to load or smoke leaves the old one serving."""

    def __init__(self, engine: Engine, registry: Path, interval_s: float) -> None:
        self.engine = engine
        self.registry = ModelRegistry(registry)
        self.interval_s = interval_s
        self.failed: set[str] = set()  # not retried: a broken version stays broken
        self.waiting: str | None = None  # the version whose export waits for the work turn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            if not self.engine.release_retired():  # its collection covers the idle one's
                self.engine.collect_when_idle()
            self._stop.wait(self.interval_s)

    def check_once(self) -> bool:
        """Swap to the registry's current version if it is new and good; True if swapped."""
        try:
            current = self.registry.current()
        except (RegistryError, OSError) as err:
            log.warning("registry %s unreadable: %s", self.registry.root, err)
            return False
        served = self.engine.model
        if current is None or current.version in self.failed:
            return False
        if served is not None and served.version == current.version:
            return False
        if self.waiting != current.version:
            log.info("loading model version %s", current.version)
        try:
            with self.registry.loading(current.version) as held:  # `prune` leaves it alone
                model = load_served_model(self.engine.config, held.path, held.version)
        except TurnBusy:
            if self.waiting != current.version:
                log.info(
                    "version %s waits for the node's round to end to be exported", current.version
                )
                self.waiting = current.version
            return False
        except Exception as err:  # noqa: BLE001 - any failure must leave the old model serving
            self._refuse(current.version, err, served)
            return False
        self.waiting = None
        self.engine.install(model)
        self.engine.metrics.swaps.inc()
        log.info("now serving version %s", current.version)
        return True

    def _refuse(self, version: str, err: Exception, served: ServedModel | None) -> None:
        """Remember, count and log (once) a version that did not load."""
        self.failed.add(version)
        self.engine.metrics.swap_failures.inc()
        if isinstance(err, ExportError):
            self.engine.metrics.export_failures.labels(reason=err.reason).inc()
        log.error(
            "version %s refused (%s: %s); still serving %s",
            version,
            type(err).__name__,
            err,
            served.version if served else "nothing",
        )
