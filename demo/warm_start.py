"""`python -m demo --make-warm-start`: rebuild the public warm start the demo's consortium
starts from (`demo.sources.WARM_START`), with the product's own `make_warm_start`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from demo.plan import make_plan
from demo.progress import say
from demo.sources import PUBLIC_NOTES, WARM_START

# The warm start benchmarks/results/privacy.md scored (0.812 strict F1 alone on the test set):
# 3 passes, batch 16, seed 1 (its head init and shuffling)
EPOCHS, SEED = 3, 1


def make(state_dir: Path, data: Path, out: Path = WARM_START) -> dict[str, Any]:
    """Train the full plan's seeded start, without DP, on the first PUBLIC_NOTES development
    sentences of `data` (no box of the demo holds them) and write it to `out`."""
    from appliance.readers import read_notes
    from federation.warm_start import make_warm_start

    public = read_notes(str(data / "devel.tsv")).notes[:PUBLIC_NOTES]
    cfg = replace(make_plan(quick=False).federation, warm_start="", seed=SEED)
    say(f"training the warm start: {len(public)} public sentences, {EPOCHS} epochs (~13 min)")
    made = make_warm_start(cfg, public, EPOCHS, out, state_dir, batch_size=16)
    say(f"wrote {out}")
    return made


def check(path: str) -> None:
    """Refuse to start a demo whose warm start is not on disk, before any process starts."""
    if path and not Path(path).is_file():
        raise ValueError(
            f"{path}: the consortium's public warm start is missing; "
            "`python -m demo --make-warm-start` rebuilds it (~13 min of a core)"
        )
