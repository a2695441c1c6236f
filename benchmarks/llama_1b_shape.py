"""A random-weight checkpoint with LLaMA 3.2-1B's published configuration, for measuring at size.

    .venv/bin/python benchmarks/llama_1b_shape.py [--state-dir DIR]

Writes `<state_dir>/bases/llama-3.2-1b-shape/` (never into git): `config.json` exactly as Meta
publishes it for Llama-3.2-1B (16 layers, hidden 2048, 32 heads / 8 KV heads, intermediate 8192,
vocab 128,256, tied embeddings, llama3 RoPE scaling), one bf16 `model.safetensors` (2.47 GB, as
the real checkpoint ships) of seeded random weights, and the embedded SmolLM2 tokenizer (its ids
are all below 49,152, inside the 1B vocabulary). It is a Hugging Face directory like the one IT
places for the real model, so every `--base` path runs on it unchanged: `appliance train --base
DIR`, `appliance serve`, the federation. The weights are drawn tensor by tensor (normal, std
0.02; norms 1), so writing it holds one bf16 copy, not an fp32 model. Prints the directory;
an existing complete one is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAME = "llama-3.2-1b-shape"
DONE = "shape.json"  # written last: the directory is complete
SEED = 1234
# meta-llama/Llama-3.2-1B config.json, as published.
LLAMA_3_2_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}


def shapes() -> dict[str, tuple[int, ...]]:
    """Every saved tensor's name and shape (the tied output head is not saved)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B))
    return {
        name: tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"
    }


def random_weights(seed: int = SEED) -> dict:
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    std = float(LLAMA_3_2_1B["initializer_range"])
    out = {}
    for name, shape in tqdm(shapes().items(), desc="random weights", unit="tensor"):
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            values = torch.empty(shape, dtype=torch.bfloat16)
            out[name] = values.normal_(0.0, std, generator=generator)
    return out


def make_llama_1b_shape(state_dir: Path, seed: int = SEED) -> Path:
    """The checkpoint's directory under `state_dir`, written unless it is already complete."""
    from safetensors.torch import save_file

    from appliance.model import embedded_source, load_tokenizer

    target = state_dir / "bases" / NAME
    if (target / DONE).is_file():
        return target
    tmp = target.with_name(f"{NAME}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "config.json").write_text(json.dumps(LLAMA_3_2_1B, indent=2), encoding="utf-8")
        load_tokenizer(embedded_source()).save_pretrained(str(tmp))
        save_file(random_weights(seed), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / DONE).write_text(json.dumps({"seed": seed, "config": "Llama-3.2-1B"}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    print(make_llama_1b_shape(args.state_dir, args.seed))


if __name__ == "__main__":
    main()
