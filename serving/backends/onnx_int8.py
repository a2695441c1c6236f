"""`onnx-int8`: ONNX Runtime with int8 weights and int8 compute (VNNI/AMX), 4-bit embedding.

The same export path and session as `onnx-int4`, with the `onnx-int8` recipe of `onnx_export`:
decoder MatMuls become DynamicQuantizeMatMul (per-channel int8 weights, activations quantized per
batch), which ONNX Runtime runs on int8 dot-product instructions. Torch-free like `onnx-int4`.
"""

from __future__ import annotations

from serving.backends.onnx_int4 import OnnxInt4Backend


class OnnxInt8Backend(OnnxInt4Backend):
    name = "onnx-int8"
    quantization = "int8"
