"""`python -m demo --single-box`: train `top:8` on BC5CDR, evaluate, annotate a sample note."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from appliance.config import ApplianceConfig, ModelConfig, TrainConfig
from appliance.evaluation import evaluate_predictions
from appliance.inference import Annotator, spans_as_json
from appliance.layers import LayerSelection
from appliance.model import load_model
from appliance.package import save_package
from appliance.readers import read_notes
from appliance.training import Trainer
from demo.sources import SAMPLE_NOTE


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_demo(state_dir: str | None, data: Path, quick: bool = False) -> dict[str, Any]:
    """Train, evaluate and annotate; sizes fit the 2-core box (quick: a smoke run)."""
    sizes = (300, 150, 150) if quick else (2000, 500, 1000)
    cfg = ApplianceConfig(
        model=ModelConfig(base="embedded"),
        train=TrainConfig(layers="top:8", epochs=1 if quick else 2, max_train_notes=sizes[0]),
        state_dir=state_dir or "",
    )
    started = time.perf_counter()
    _say(f"reading BC5CDR from {data} (CC-BY 4.0, see data/bc5cdr/README.md)")
    train = read_notes(str(data / "train.tsv")).notes[: sizes[0]]
    dev = read_notes(str(data / "devel.tsv")).notes[: sizes[1]]
    test = read_notes(str(data / "test.tsv")).notes[: sizes[2]]
    _say("loading the embedded SmolLM2-135M (first run dequantizes the GGUF once, ~40 s)")
    loaded = load_model(cfg.model, cfg.train.labels, cfg.state_dir, cfg.train.layers)
    selection = LayerSelection.parse(cfg.train.layers, loaded.num_layers)
    report = selection.report(loaded.model)
    _say(
        f"training {selection.spec} = layers {list(selection.indices)}: "
        f"{report['trainable_parameters']:,} parameters, "
        f"{int(report['exchange_bytes']) / 1e6:.1f} MB per exchange; "
        f"{len(train)} train / {len(dev)} dev notes"
    )
    result = Trainer(loaded, selection, cfg.train).fit(train, dev)
    package_dir = Path(cfg.state_dir) / "packages" / f"demo-{int(time.time())}"
    save_package(
        package_dir,
        loaded,
        selection,
        {"max_tokens": cfg.train.max_tokens, "context_tokens": cfg.train.context_tokens},
        {"config": cfg.to_dict(), "result": result.as_dict(), "demo": True},
    )
    _say(f"package written to {package_dir}")
    annotator = Annotator(loaded, cfg.train.max_tokens, cfg.train.context_tokens)
    metrics = evaluate_predictions(test, annotator.predict(test))
    strict = metrics["entity_strict"]
    _say(
        f"strict test F1 on {len(test)} BC5CDR test sentences: "
        f"{strict['overall']['f1']:.3f} (Chemical {strict.get('Chemical', {}).get('f1', 0):.3f},"
        f" Disease {strict.get('Disease', {}).get('f1', 0):.3f})"
    )
    spans = annotator.annotate([SAMPLE_NOTE])[0]
    _say("sample note:")
    print(SAMPLE_NOTE)
    for s in spans:
        print(
            f"  [{s.start:>4}, {s.end:>4})  {s.label:<9} {s.score or 0:.2f}  "
            f"{SAMPLE_NOTE[s.start : s.end]}"
        )
    _say(f"done in {time.perf_counter() - started:.0f} s")
    if quick:
        shutil.rmtree(package_dir, ignore_errors=True)
    return {
        "package": None if quick else str(package_dir),
        "dev_f1_per_epoch": [round(h.dev_f1, 4) for h in result.history],
        "test": metrics,
        "entities": spans_as_json(SAMPLE_NOTE, spans),
    }
