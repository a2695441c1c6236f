"""Tiny hospitals improve in simulation, in every mode; bytes are what the payloads weigh."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.partition import partition
from federation.simulation import simulate
from tests.federation.helpers import corpus, tiny_config


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fed-corpus")
    notes = corpus(root, 150, seed=1)
    return partition(notes, 3, "dirichlet", alpha=0.5, seed=3), corpus(root, 40, seed=2)


@pytest.mark.parametrize(
    ("mode", "compression"),
    [("layers", "none"), ("lora", "int8"), ("full", "fp16"), ("layers", "topk")],
)
def test_hospitals_improve(tiny_llama: Path, tmp_path: Path, split, mode: str, compression: str):
    parts, test = split
    extra = {"topk_fraction": 0.2} if compression == "topk" else {}
    cfg = tiny_config(tiny_llama, mode=mode, compression=compression, **extra)
    result = simulate(cfg, parts, test, tmp_path)
    f1 = [r.test_f1 for r in result.rounds]
    assert f1[-1] > result.initial_f1 + 0.3, (result.initial_f1, f1)
    first = result.rounds[0]
    assert not first.rejected and not first.declined
    assert all(b > 0 for b in first.bytes_up.values())
