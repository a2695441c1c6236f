"""`onnx-int8`: ONNX Runtime with int8 weights and int8 compute (VNNI/AMX), 4-bit embedding.

The same export path and session as `onnx-int4`, with the `onnx-int8` recipe of `onnx_export`:
decoder MatMuls become DynamicQuantizeMatMul (per-channel int8 weights), which ONNX Runtime runs
on int8 dot-product instructions. Torch-free like `onnx-int4`.

DynamicQuantizeMatMul picks one activation scale for its whole input tensor, so a window run in
a batch would be scored with a scale set by its neighbours and their padding: the same note could
get other entities depending on the traffic around it. Each window therefore runs alone, so an
answer depends only on the note. Windows of ~250 tokens already fill 2 cores: batched, 110 of
16,315 words changed tag with the batch, and running alone cost 5% of throughput
(benchmarks/results/serving_windows.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from appliance.encoding import EncodedWindow
from serving.backends.onnx_int4 import OnnxInt4Backend


class OnnxInt8Backend(OnnxInt4Backend):
    name = "onnx-int8"
    quantization = "int8"

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        run_one = super().log_probs
        return [run_one([window])[0] for window in windows]
