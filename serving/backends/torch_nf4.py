"""`torch-nf4`: bitsandbytes 4-bit NF4 weights in PyTorch; the GPU path, which also runs on CPU.

The base's frozen layers are loaded in NF4 (`appliance.model.nf4_config`); the package's trained
layers and the head stay in full precision, exactly as they were trained. On a CUDA machine the
model is placed on the GPU, otherwise bitsandbytes' CPU kernels run it (slowly: for tests).
"""

from __future__ import annotations

from serving.backends.torch_fp32 import TorchBackend


class TorchNf4Backend(TorchBackend):
    name = "torch-nf4"
    quantization = "nf4"
