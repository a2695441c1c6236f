"""Shared fixtures: a tiny random Llama token classifier saved in Hugging Face format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
BC5CDR = ROOT / "data" / "bc5cdr"


def _training_text() -> list[str]:
    lines = (BC5CDR / "train.tsv").read_text(encoding="utf-8").splitlines()[:4000]
    words = [line.split("\t")[0] for line in lines if line.strip()]
    return [" ".join(words[i : i + 40]) for i in range(0, len(words), 40)]


def make_tiny_llama(path: Path, seed: int = 0, layers: int = 4) -> Path:
    """Save a seeded random Llama (hidden 64) with a byte-level BPE tokenizer trained on BC5CDR."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_training_text(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    # Saved as a causal LM, the way LLaMA 3.2-1B arrives from IT: the NER head is always new.
    LlamaForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scale",
        action="store_true",
        help="also run the tests marked `scale`: the real paths on the LLaMA 3.2-1B shape "
        "(a 2.5 GB checkpoint in the state dir, minutes, up to ~14 GB of memory)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--scale"):
        return
    skip = pytest.mark.skip(reason="runs on the LLaMA 3.2-1B shape: opt in with --scale")
    for item in items:
        if "scale" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("other-llama"), seed=1)


def tiny_train_config(spec: str, epochs: int, cache_dir: Path):  # type: ignore[no-untyped-def]
    """What the tiny model learns the synthetic corpus with, in seconds."""
    from appliance.config import TrainConfig

    return TrainConfig(
        layers=spec,
        epochs=epochs,
        batch_size=8,
        learning_rate=3e-3,
        head_learning_rate=1e-2,
        patience=epochs,
        cache_dir=str(cache_dir),
    )


def train_tiny_package(base: Path, root: Path, spec: str = "top:2", epochs: int = 3) -> Path:
    """Train `spec` of the tiny Llama on the synthetic corpus and save a model package."""
    from appliance.config import ModelConfig
    from appliance.layers import LayerSelection
    from appliance.model import load_model
    from appliance.package import save_package
    from appliance.readers import read_jsonl
    from appliance.training import Trainer
    from tests.appliance.corpus import write_jsonl

    root.mkdir(parents=True, exist_ok=True)
    train = read_jsonl(write_jsonl(root / "train.jsonl", 160, seed=1)).notes
    dev = read_jsonl(write_jsonl(root / "dev.jsonl", 40, seed=2)).notes
    cfg = tiny_train_config(spec, epochs, root / "act")

    loaded = load_model(ModelConfig(base=str(base)), ("Chemical", "Disease"), root, spec)
    selection = LayerSelection.parse(spec, loaded.num_layers)
    result = Trainer(loaded, selection, cfg, progress=False).fit(train, dev)
    windowing = {"max_tokens": cfg.max_tokens, "context_tokens": cfg.context_tokens}
    return save_package(
        root / "package", loaded, selection, windowing, {"result": result.as_dict()}
    )


@pytest.fixture(scope="session")
def tiny_package(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package (top:2 + head of the tiny Llama) that finds the synthetic entities."""
    return train_tiny_package(tiny_llama, tmp_path_factory.mktemp("tiny-package"))
