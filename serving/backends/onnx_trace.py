"""Trace a model package to fp32 ONNX: the first step of an export (serving.backends.onnx_export
runs it in a process of its own and quantizes the result)."""

from __future__ import annotations

from pathlib import Path

import torch

from appliance.forward import full_logits
from appliance.package import load_packaged_model


class TransposedLinear(torch.nn.Module):
    """`x @ weight_t + bias`, the weight stored as (in, out), ONNX's MatMul layout."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight_t = linear.weight.detach().t().contiguous()
        self.weight_t = torch.nn.Parameter(weight_t, requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


def transpose_linears(model: torch.nn.Module) -> None:
    """Replace each `torch.nn.Linear` in `model` by a `TransposedLinear` of the same weights, one
    at a time, so one layer's weight is held twice at most."""
    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    for name in names:  # names only: a list of the modules would keep every replaced weight
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, TransposedLinear(getattr(owner, attr)))


class LogProbs(torch.nn.Module):
    """Windows -> log-probabilities over the tags: what the ONNX backends run."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = full_logits(self.model, input_ids, attention_mask)
        return torch.log_softmax(logits.float(), dim=-1)


def trace_fp32(
    package_path: Path,
    state_dir: Path,
    base: str | None,
    target: Path,
    tokenizer_dir: Path,
    opset: int,
) -> dict:
    """Trace the packaged model to the ONNX file `target`, its weights in files beside it, and
    save its tokenizer in `tokenizer_dir`; returns the labels and pad id.

    Every linear layer is traced as one MatMul on its weight stored transposed, so the graph's
    initializers are the model's own tensors. Traced as `x @ W.T`, the exporter folds each
    transpose into a second copy of the weight: 2x the fp32 model at the 1B size.
    """
    loaded = load_packaged_model(package_path, state_dir, base)[0]
    loaded.tokenizer.save_pretrained(str(tokenizer_dir))
    transpose_linears(loaded.model)
    module = LogProbs(loaded.model).eval()
    ids = torch.full((2, 24), 3, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, mask),
            str(target),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["log_probs"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "log_probs": axes},
            opset_version=opset,
        )
    labels, pad_id = list(loaded.labels), int(loaded.tokenizer.pad_token_id)
    del loaded, module
    weights_apart(target)
    return {"labels": labels, "pad_id": pad_id}


def weights_apart(model_file: Path) -> None:
    """Move the initializers of a model written whole (under 2 GB, torch writes them inline)
    to a file beside it, as torch writes a larger model's: the quantization that follows reads
    one weight at a time from there, at every size."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(model_file), load_external_data=False)
    if any(uses_external_data(init) for init in model.graph.initializer):
        return
    onnx.save_model(
        model,
        str(model_file),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=model_file.name + ".data",
        size_threshold=1024,
    )
