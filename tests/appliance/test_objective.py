"""The training objective's options: layer-wise learning-rate decay, the schedules, the `O` tag's
weight and label smoothing, each checked against its definition, and a model trained with all
of them still learns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.collate import collate_ids
from appliance.config import ModelConfig, TrainConfig
from appliance.encoding import IGNORE, encode_notes
from appliance.forward import full_logits
from appliance.layers import LayerSelection
from appliance.model import load_model
from appliance.objective import batch_loss, build_optimizer, build_scheduler
from appliance.readers import read_jsonl, read_notes
from appliance.training import Trainer
from tests.appliance.corpus import write_jsonl
from tests.conftest import tiny_train_config

DATA = Path(__file__).resolve().parents[2] / "data" / "bc5cdr"
LABELS = ("Chemical", "Disease")


def _loaded(tiny_llama: Path, tmp_path: Path, spec: str):
    loaded = load_model(ModelConfig(base=str(tiny_llama)), LABELS, tmp_path, spec)
    selection = LayerSelection.parse(spec, loaded.num_layers)
    selection.apply(loaded.model)
    return loaded, selection


def _rates(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_param[id(p)] for n, p in model.named_parameters() if id(p) in by_param}


def test_layer_decay_scales_each_trained_layer_below_the_top(tiny_llama: Path, tmp_path: Path):
    loaded, selection = _loaded(tiny_llama, tmp_path, "top:3")
    top = selection.indices[-1]
    cfg = TrainConfig(layers="top:3", learning_rate=1e-3, head_learning_rate=5e-3, layer_decay=0.5)
    rates = _rates(build_optimizer(loaded.model, selection, cfg), loaded.model)
    for name, rate in rates.items():
        if name.startswith("score."):
            assert rate == 5e-3
            continue
        layer = int(name.split("layers.")[1].split(".")[0])
        assert rate == pytest.approx(1e-3 * 0.5 ** (top - layer)), name
    assert sorted(set(rates.values())) == pytest.approx([2.5e-4, 5e-4, 1e-3, 5e-3])
    flat = _rates(
        build_optimizer(loaded.model, selection, replace(cfg, layer_decay=1.0)), loaded.model
    )
    assert set(flat.values()) == {1e-3, 5e-3}
    with pytest.raises(ValueError, match="layer_decay must be in"):
        TrainConfig(layer_decay=0.0)


@pytest.mark.parametrize(
    ("schedule", "middle", "last"), [("linear", 0.5, 0.0), ("cosine", 0.5, 0.0), ("constant", 1, 1)]
)
def test_schedules_warm_up_then_follow_their_shape(schedule: str, middle: float, last: float):
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    cfg = TrainConfig(schedule=schedule, warmup_ratio=0.1)
    scheduler = build_scheduler(optimizer, cfg, steps=110)
    rates = []
    for _ in range(110):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5 / 11)  # warm-up over 11 steps
    assert rates[11] == pytest.approx(1.0)
    assert rates[11 + 99 // 2] == pytest.approx(middle, abs=0.02)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(last, abs=1e-9)
    if schedule == "cosine":  # slower than linear at first, faster at the end
        assert rates[11 + 25] > 1 - 25 / 99
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step")


def test_o_weight_and_label_smoothing_follow_their_definitions(tiny_llama: Path, tmp_path: Path):
    loaded, _ = _loaded(tiny_llama, tmp_path, "all")
    notes = read_notes(str(DATA / "devel.tsv")).notes[:8]
    windows = encode_notes(loaded.tokenizer, notes, loaded.labels, 64, 8)

    ids, mask, labels = collate_ids(windows, int(loaded.tokenizer.pad_token_id))
    loaded.model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(full_logits(loaded.model, ids, mask).float(), -1).flatten(0, 1)
        flat = labels.flatten()
        keep = flat != IGNORE
        token_nll = -logp[keep].gather(1, flat[keep, None]).squeeze(1)
        entity = flat[keep] != 0
        assert entity.any() and (~entity).any()
        weights = torch.where(entity, 1.0, 0.25)
        expected = (token_nll * weights).sum() / weights.sum()
        got = batch_loss(loaded, windows, None, 0, TrainConfig(o_weight=0.25))
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
        smoothed = 0.9 * token_nll.mean() + 0.1 * (-logp[keep].mean(1)).mean()
        got = batch_loss(loaded, windows, None, 0, TrainConfig(label_smoothing=0.1))
        assert got.item() == pytest.approx(smoothed.item(), rel=1e-5)
        plain = batch_loss(loaded, windows, None, 0, TrainConfig())
        assert plain.item() == pytest.approx(token_nll.mean().item(), rel=1e-5)
        rows = -logp.gather(1, flat.clamp(min=0)[:, None]).view(labels.shape)
        own = [float(r[k].mean()) for r, k in zip(rows, labels != IGNORE, strict=True)]
        windowed = batch_loss(loaded, windows, None, 0, TrainConfig(), per_window=True)
        assert windowed.tolist() == pytest.approx(own, rel=1e-5)
        assert abs(windowed.mean().item() - plain.item()) > 1e-4  # the windows differ in length
    for name, value in (("o_weight", 0.0), ("label_smoothing", 1.0)):
        with pytest.raises(ValueError, match=f"{name} must be"):
            TrainConfig(**{name: value})


def test_training_with_every_option_learns_the_tiny_corpus(tiny_llama: Path, tmp_path: Path):
    root = tmp_path / "corpus"
    root.mkdir()
    train = read_jsonl(write_jsonl(root / "train.jsonl", 160, seed=1)).notes
    dev = read_jsonl(write_jsonl(root / "dev.jsonl", 40, seed=2)).notes
    cfg = replace(
        tiny_train_config("top:2", 4, tmp_path / "act"),
        schedule="cosine",
        layer_decay=0.8,
        label_smoothing=0.05,
        o_weight=0.5,
    )
    loaded, selection = _loaded(tiny_llama, tmp_path, "top:2")
    result = Trainer(loaded, selection, cfg, progress=False).fit(train, dev)
    losses = [h.loss for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.best_dev_f1 > 0.8
