"""Partitions have their stated properties; the run config converts in one place."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from federation.config import FederationConfig, from_run_config, to_run_config
from federation.partition import dominant_label, partition
from tests.federation.helpers import corpus


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory):
    return corpus(tmp_path_factory.mktemp("p"), 300, seed=4)


def test_iid_is_even_and_complete(notes):
    parts = partition(notes, 3, "iid", seed=1)
    assert sorted(len(p) for p in parts) == [100, 100, 100]
    assert sorted(n.note_id for p in parts for n in p) == sorted(n.note_id for n in notes)


def test_dirichlet_skews_labels_and_repeats_with_the_seed(notes):
    parts = partition(notes, 3, "dirichlet", alpha=0.1, seed=1)
    assert parts == partition(notes, 3, "dirichlet", alpha=0.1, seed=1)
    shares = [Counter(dominant_label(n) for n in p) for p in parts]
    overall = Counter(dominant_label(n) for n in notes)
    # with a small alpha some hospital's class mix is far from the corpus mix
    skew = max(
        abs(s[c] / sum(s.values()) - overall[c] / len(notes)) for s in shares for c in overall
    )
    assert skew > 0.2 and sum(len(p) for p in parts) == len(notes)


def test_quantity_skew_gives_unequal_sizes(notes):
    sizes = sorted(len(p) for p in partition(notes, 3, "quantity", alpha=0.5, seed=2))
    assert sizes[-1] > 2 * sizes[0] and min(sizes) >= 1


def test_bad_partitions_are_refused(notes):
    with pytest.raises(ValueError, match="cannot split 300 notes over 0"):
        partition(notes, 0, "iid")
    with pytest.raises(ValueError, match="choose one of"):
        partition(notes, 2, "random")


def test_run_config_round_trip_and_errors(tmp_path: Path):
    cfg = FederationConfig(mode="lora", compression="int8", labels=("Chemical",), rounds=5)
    assert from_run_config(to_run_config(cfg)) == cfg
    assert from_run_config({"dp.noise-multiplier": 0.7}).dp_noise_multiplier == 0.7
    with pytest.raises(ValueError, match="unknown run-config key 'colour'"):
        from_run_config({"colour": "red"})
    with pytest.raises(ValueError, match="run-config rounds: expected int"):
        from_run_config({"rounds": "many"})
    with pytest.raises(ValueError, match="mode 'half'"):
        FederationConfig(mode="half")
    with pytest.raises(ValueError, match="proximal term would be silently lost"):
        FederationConfig(dp=True, strategy="fedprox")
    with pytest.raises(ValueError, match="secagg with compression"):
        FederationConfig(secagg=True, compression="topk")
    with pytest.raises(ValueError, match="client-dp with compression"):
        FederationConfig(client_dp="client-fixed", compression="int8")
    with pytest.raises(ValueError, match="task 'summary'"):
        FederationConfig(task="summary")
    with pytest.raises(ValueError, match="lr-schedule 'step'"):
        FederationConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="lr-min-fraction 0"):
        FederationConfig(lr_min_fraction=0.0)
    with pytest.raises(ValueError, match=r"dp-noise-multiplier -1.0: must be >= 0 \(0: calibrated"):
        FederationConfig(dp_noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="dp-rounds must be > 0, got 0"):
        FederationConfig(dp_rounds=0)
    with pytest.raises(ValueError, match=r"micro-batch-size -1: must be >= 0 \(0: auto\)"):
        FederationConfig(micro_batch_size=-1)


def test_a_large_base_trains_on_nf4_unless_configured():
    small, large = 134_515_008, 1_235_814_400  # SmolLM2-135M, LLaMA 3.2-1B
    auto = FederationConfig()
    assert auto.base_quantization(small, gpu=False) == "none"
    assert auto.base_quantization(large, gpu=False) == "nf4"
    assert FederationConfig(mode="lora").base_quantization(small, gpu=True) == "nf4"
    assert FederationConfig(mode="lora").base_quantization(small, gpu=False) == "none"
    assert FederationConfig(frozen_quantization="none").base_quantization(large, False) == "none"
    assert FederationConfig(frozen_quantization="nf4").base_quantization(small, False) == "nf4"
    with pytest.raises(ValueError, match="frozen-quantization 'int3'"):
        FederationConfig(frozen_quantization="int3")
    parsed = from_run_config({"frozen-quantization": "nf4", "optimizer": "adamw"})
    assert (parsed.frozen_quantization, parsed.optimizer) == ("nf4", "adamw")
    assert from_run_config({"optimizer": "sgd"}).optimizer == "sgd"
    with pytest.raises(ValueError, match="optimizer 'lion'"):
        FederationConfig(optimizer="lion")


def test_the_cosine_schedule_decays_the_rates_over_the_rounds(tiny_llama: Path, tmp_path: Path):
    cosine = FederationConfig(rounds=5, lr_schedule="cosine", lr_min_fraction=0.2)
    factors = [cosine.round_lr_factor(r) for r in range(1, 6)]
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.2)
    assert factors[2] == pytest.approx(0.6)  # halfway: the mean of both ends
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert FederationConfig(rounds=5).round_lr_factor(5) == 1.0
    assert FederationConfig(rounds=1, lr_schedule="cosine").round_lr_factor(1) == 1.0

    from federation.task import HospitalNode
    from tests.federation.helpers import tiny_config

    cfg = tiny_config(
        tiny_llama, rounds=5, lr_schedule="cosine", lr_min_fraction=0.2, micro_batch_size=4
    )
    node = HospitalNode.load(cfg, [], tmp_path / "node", "h")
    last = node._train_config(5)
    assert last.micro_batch_size == 4  # the run's, not training's default
    assert last.learning_rate == pytest.approx(cfg.learning_rate * 0.2)
    assert last.head_learning_rate == pytest.approx(cfg.head_learning_rate * 0.2)


@pytest.mark.parametrize(
    ("overrides", "parameters", "resolved"),
    [
        ({"mode": "layers"}, 1_236_000_000, "int8"),  # layers at the 1B size: int8 deltas
        ({"mode": "layers"}, 135_000_000, "none"),  # the embedded model: fp32
        ({"mode": "full"}, 1_236_000_000, "int8"),
        ({}, 1_236_000_000, "none"),  # the default, LoRA: adapters are small already
        ({"secagg": True, "min_nodes": 3}, 1_236_000_000, "none"),
        ({"client_dp": "client-fixed"}, 1_236_000_000, "none"),
        ({"compression": "fp16"}, 1_236_000_000, "fp16"),  # asked for, kept
    ],
)
def test_auto_compression_follows_the_base_size_and_the_run(overrides, parameters, resolved):
    cfg = FederationConfig(**overrides)
    assert FederationConfig().compression == "auto"
    assert cfg.for_base(parameters).compression == resolved


def test_auto_micro_batch_is_8_windows_on_a_large_base():
    assert FederationConfig().micro_batch_size == 0  # auto
    assert FederationConfig().for_base(1_236_000_000).micro_batch_size == 8
    assert FederationConfig().for_base(135_000_000).micro_batch_size == 32
    asked = FederationConfig(micro_batch_size=16, compression="fp16")
    assert asked.for_base(1_236_000_000).micro_batch_size == 16  # asked for, kept
