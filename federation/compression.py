"""Update compression: fp16/bf16 weights, int8 block deltas, top-k deltas with error feedback.

A payload is a flat dict of named numpy arrays (what goes into a Flower message):

- `none`:  `name` -> float32 weights
- `fp16`:  `name` -> float16 weights (error <= 2^-11 relative)
- `bf16`:  `name@bf16` -> uint16 bit patterns of bfloat16 weights (error <= 2^-8 relative)
- `int8`:  `name@q` int8, `name@scale` float32 per block (`name@block` its size) of the
           delta from the global weights; per-element error <= scale / 2 = max|delta| / 254
- `topk`:  `name@idx` int32 and `name@val` float16 of the largest |delta + residual| entries;
           what is not sent stays in the sender's residual and is added next round
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

Arrays = dict[str, np.ndarray]


def encode_update(
    new: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    method: str,
    *,
    block: int = 64,
    fraction: float = 0.01,
    residual: dict[str, np.ndarray] | None = None,
) -> Arrays:
    """Compress `new` (weights after local training) against `reference` (the global weights).

    For `topk`, `residual` is updated in place (error feedback) and must be kept by the caller.
    """
    if method == "none":  # copies: `new` may be views of a model that trains on
        return {k: np.array(v, dtype=np.float32) for k, v in new.items()}
    if method == "fp16":
        return {k: np.asarray(v, dtype=np.float16) for k, v in new.items()}
    if method == "bf16":
        return {f"{k}@bf16": _to_bf16_bits(v) for k, v in new.items()}
    if method == "int8":
        out: Arrays = {}
        for k in new:  # one delta at a time: all of them at once are the travelling part again
            delta = np.asarray(new[k], np.float32) - np.asarray(reference[k], np.float32)
            out[f"{k}@q"], out[f"{k}@scale"] = quantize_int8(delta, block)
            out[f"{k}@block"] = np.array([block], np.int32)
        return out
    deltas = {k: np.asarray(new[k], np.float32) - np.asarray(reference[k], np.float32) for k in new}
    if method == "topk":
        if residual is None:
            raise ValueError("topk compression needs a residual dict (error feedback)")
        return _topk(deltas, fraction, residual)
    raise ValueError(f"unknown compression {method!r}")


VALUE_TAGS = ("", "bf16", "q", "idx")  # the tags whose entry carries a tensor's value
SIDE_TAGS = ("scale", "val", "block")  # entries that travel beside a value


def payload_names(payload: Mapping[str, np.ndarray]) -> list[str]:
    """The tensor names a payload carries, in its order; ValueError on an unknown encoding."""
    names = []
    for key in payload:
        name, _, tag = key.partition("@")
        if tag in VALUE_TAGS:
            names.append(name)
        elif tag not in SIDE_TAGS:
            raise ValueError(f"update tensor {key!r}: unknown encoding {tag!r}")
    return names


def decode_tensor(
    payload: Mapping[str, np.ndarray], name: str, ref: np.ndarray | None
) -> np.ndarray:
    """The float32 weights of one tensor `name` of a payload (deltas are added to `ref`, its
    global weights; None where the global model has no such tensor): an update can be decoded,
    checked and averaged a tensor at a time."""
    if name in payload:
        return np.asarray(payload[name], np.float32)
    if f"{name}@bf16" in payload:
        return _from_bf16_bits(payload[f"{name}@bf16"])
    if ref is None:
        raise ValueError(f"update tensor {name!r} is not in the global model")
    ref = np.asarray(ref, np.float32)
    if f"{name}@q" in payload:
        block = int(np.asarray(payload[f"{name}@block"]).reshape(-1)[0])
        return ref + dequantize_int8(
            payload[f"{name}@q"], payload[f"{name}@scale"], block, ref.shape
        )
    dense = ref.copy().reshape(-1)
    idx = np.asarray(payload[f"{name}@idx"], np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= dense.size):
        raise ValueError(f"update tensor {name!r}: top-k index out of range")
    dense[idx] += np.asarray(payload[f"{name}@val"], np.float32)
    return dense.reshape(ref.shape)


def decode_update(payload: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Arrays:
    """Full float32 weights from any payload above (deltas are added to `reference`)."""
    return {n: decode_tensor(payload, n, reference.get(n)) for n in payload_names(payload)}


def quantize_int8(delta: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    flat = delta.reshape(-1).astype(np.float32)
    pad = (-flat.size) % block
    blocks = np.pad(flat, (0, pad)).reshape(-1, block)
    scale = np.abs(blocks).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(-1)[: flat.size], scale.astype(np.float32)


def dequantize_int8(
    q: np.ndarray, scale: np.ndarray, block: int, shape: tuple[int, ...]
) -> np.ndarray:
    size = int(np.prod(shape))
    if block <= 0 or q.size != size or scale.size != -(-size // block):
        raise ValueError(f"int8 update: {q.size} values / {scale.size} scales do not fit {shape}")
    flat = np.pad(np.asarray(q, np.float32).reshape(-1), (0, scale.size * block - size))
    values = flat.reshape(-1, block) * np.asarray(scale, np.float32)[:, None]
    return values.reshape(-1)[:size].reshape(shape)


def _topk(deltas: Arrays, fraction: float, residual: dict[str, np.ndarray]) -> Arrays:
    out: Arrays = {}
    for name, delta in deltas.items():
        total = delta.reshape(-1) + residual.get(name, np.zeros(delta.size, np.float32))
        k = max(1, int(round(fraction * total.size)))
        idx = np.argpartition(np.abs(total), total.size - k)[total.size - k :]
        values = total[idx].astype(np.float16)
        sent = np.zeros_like(total)
        sent[idx] = values.astype(np.float32)
        residual[name] = total - sent  # error feedback: what was not sent (or rounded) waits
        out[f"{name}@idx"] = idx.astype(np.int32)
        out[f"{name}@val"] = values
    return out


def _to_bf16_bits(array: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.bfloat16)
    return tensor.view(torch.int16).numpy().view(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    raw = torch.from_numpy(np.ascontiguousarray(bits, dtype=np.uint16).view(np.int16))
    return raw.view(torch.bfloat16).float().numpy()


def payload_bytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes of the tensors' data; the serialized message size is measured by `wire_bytes`."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


def wire_bytes(payload: Mapping[str, np.ndarray]) -> int:
    """Size of the payload serialized exactly as Flower sends it (an ArrayRecord protobuf): the
    record is a list of framed items, so its size is the sum of one-item records', and one
    tensor at a time is serialized to count it."""
    from flwr.common import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    return sum(
        int(
            array_record_to_proto(
                ArrayRecord({k: Array(np.ascontiguousarray(payload[k]))})
            ).ByteSize()
        )
        for k in payload
    )
