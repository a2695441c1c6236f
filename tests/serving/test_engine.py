"""The engine's windows: a causal package is served without right context, others with it."""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

from serving.engine import Engine, load_served_model
from serving.metrics import ServingMetrics
from tests.serving.servers import config_for


def test_causal_package_is_served_without_right_context(tiny_package: Path, tmp_path: Path):
    causal = tmp_path / "causal"
    shutil.copytree(tiny_package, causal)
    meta = json.loads((causal / "package.json").read_text(encoding="utf-8"))
    assert meta["attention"] != "causal"
    meta["attention"] = "causal"
    (causal / "package.json").write_text(json.dumps(meta), encoding="utf-8")
    context = int(meta["windowing"]["context_tokens"])
    config = config_for(tiny_package, state_dir=tmp_path / "state")
    for path, right in ((tiny_package, context), (causal, 0)):
        model = load_served_model(config, path, "v1")
        assert (model.context_tokens, model.right_tokens) == (context, right)
        model.backend.close()


def test_a_swapped_out_model_is_released_once_no_request_holds_it(
    tiny_package: Path, tmp_path: Path
):
    # Prepare
    config = config_for(tiny_package, state_dir=tmp_path)
    engine = Engine(config, ServingMetrics())
    try:
        engine.install(load_served_model(config, tiny_package, "v1"))
        assert not engine.release_retired()  # nothing swapped out yet
        in_flight = engine.model  # a request still holding v1

        # Execute
        engine.install(load_served_model(config, tiny_package, "v2"))
        held = engine.release_retired()
        old = weakref.ref(in_flight)
        del in_flight
        released = engine.release_retired()

        # Assert
        assert (held, released) == (False, True)
        assert old() is None and not engine.release_retired()
    finally:
        engine.batcher.stop()
