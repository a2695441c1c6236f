"""The export's quantization passes read one fp32 weight at a time; they must give the weights
ONNX Runtime's own quantizers give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data
from onnxruntime.quantization import QuantType, quantize_dynamic

from serving.backends.onnx_export import dynamic_int8
from serving.backends.onnx_trace import trace_fp32


@pytest.fixture(scope="module")
def fp32_model(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trace")
    target = folder / "model.fp32.onnx"
    trace_fp32(tiny_package, folder / "state", None, target, folder / "tokenizer", 21)
    return target


def _initializers(model: onnx.ModelProto, folder: Path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init, str(folder)) for init in model.graph.initializer}


def _run(model: onnx.ModelProto | Path) -> np.ndarray:
    source = model if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(3, 200, size=(3, 40))
    mask = np.ones_like(ids)
    mask[2, 25:] = 0
    return session.run(["log_probs"], {"input_ids": ids, "attention_mask": mask})[0]


def test_int8_pass_matches_onnx_runtime_quantize_dynamic(fp32_model: Path, tmp_path: Path):
    reference = tmp_path / "reference.onnx"
    quantize_dynamic(
        str(fp32_model),
        str(reference),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    theirs = _initializers(onnx.load(str(reference)), tmp_path)
    model = onnx.load(str(fp32_model), load_external_data=False)
    assert uses_external_data(model.graph.initializer[0])  # the trace wrote the weights apart
    dynamic_int8(model, fp32_model.parent, exclude=[])
    load_external_data_for_model(model, str(fp32_model.parent))  # what stayed fp32: norms
    ours = _initializers(model, fp32_model.parent)
    weights = [name for name in ours if name.endswith("_quantized")]
    assert len(weights) == 4 * 7 + 1  # q, k, v, o, gate, up, down in 4 layers, and the head
    for name in weights:
        scale = name.removesuffix("_quantized") + "_scale"
        assert ours[name].dtype == np.int8 and np.array_equal(ours[name], theirs[name]), name
        assert np.array_equal(ours[scale], theirs[scale]), scale
    constant = set(ours)
    assert not any(n.op_type == "MatMul" and n.input[1] in constant for n in model.graph.node)
    assert np.allclose(_run(model), _run(reference), atol=1e-5)


def test_int8_pass_leaves_excluded_matmuls(fp32_model: Path):
    model = onnx.load(str(fp32_model), load_external_data=False)
    head = [node.name for node in model.graph.node if node.name == "/score/MatMul"]
    assert head
    dynamic_int8(model, fp32_model.parent, exclude=head)
    weights = {init.name for init in model.graph.initializer}
    left = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert left == head
