"""Each compression round-trips within its stated bound; top-k carries its residual."""

from __future__ import annotations

import numpy as np
import pytest

from federation.compression import decode_update, encode_update, wire_bytes

RNG = np.random.default_rng(0)
REF = {
    "w": RNG.normal(size=(256, 96)).astype(np.float32),
    "b": RNG.normal(size=7).astype(np.float32),
}
NEW = {k: v + RNG.normal(scale=0.02, size=v.shape).astype(np.float32) for k, v in REF.items()}


@pytest.mark.parametrize(("method", "relative"), [("none", 0.0), ("fp16", 2**-11), ("bf16", 2**-8)])
def test_float_formats_are_within_their_relative_error(method: str, relative: float):
    out = decode_update(encode_update(NEW, REF, method), REF)
    for name, value in NEW.items():
        assert np.all(np.abs(out[name] - value) <= relative * np.abs(value) + 1e-12)


def test_int8_deltas_are_within_half_a_step_per_block():
    payload = encode_update(NEW, REF, "int8", block=64)
    assert payload["w@q"].dtype == np.int8 and payload["w@scale"].size == 256 * 96 // 64
    out = decode_update(payload, REF)
    delta = (NEW["w"] - REF["w"]).reshape(-1, 64)
    bound = np.abs(delta).max(axis=1, keepdims=True) / 254 + 1e-7
    assert np.all(np.abs((out["w"] - NEW["w"]).reshape(-1, 64)) <= bound)


def test_topk_sends_a_fraction_and_keeps_the_rest_as_residual():
    residual: dict[str, np.ndarray] = {}
    payload = encode_update(NEW, REF, "topk", fraction=0.05, residual=residual)
    assert payload["w@idx"].size == round(0.05 * NEW["w"].size)
    out = decode_update(payload, REF)
    # what was sent + what waits = the whole delta (up to the fp16 rounding of sent values)
    total = (out["w"] - REF["w"]).reshape(-1) + residual["w"]
    np.testing.assert_allclose(total, (NEW["w"] - REF["w"]).reshape(-1), atol=1e-4)
    # next round, the residual is added: an unchanged model still sends the waiting delta
    again = decode_update(encode_update(REF, REF, "topk", fraction=0.05, residual=residual), REF)
    assert np.abs(again["w"] - REF["w"]).max() > 0


def test_compressed_payloads_are_smaller_on_the_wire():
    sizes = {
        m: wire_bytes(encode_update(NEW, REF, m, residual={}))
        for m in ("none", "fp16", "int8", "topk")
    }
    assert sizes["topk"] < sizes["int8"] < sizes["fp16"] < sizes["none"]
    assert sizes["none"] >= sum(v.nbytes for v in NEW.values())


@pytest.mark.parametrize("method", ["none", "int8", "topk"])
def test_wire_bytes_is_the_size_of_the_message_flower_sends(method: str):
    from flwr.common import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    payload = encode_update(NEW, REF, method, residual={})
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in payload.items()})
    assert wire_bytes(payload) == array_record_to_proto(record).ByteSize()


def test_malformed_payloads_are_refused():
    with pytest.raises(ValueError, match="not in the global model"):
        decode_update({"ghost@q": np.zeros(3, np.int8)}, REF)
    bad = encode_update(NEW, REF, "topk", fraction=0.01, residual={})
    bad["b@idx"] = np.array([10_000], np.int32)
    with pytest.raises(ValueError, match="index out of range"):
        decode_update(bad, REF)
    with pytest.raises(ValueError, match="unknown encoding"):
        decode_update({"w@zip": np.zeros(1)}, REF)


@pytest.mark.parametrize("method", ["none", "fp16", "int8"])
def test_an_update_is_encoded_from_the_live_model_and_owns_its_memory(method: str):
    """Encoded straight from the model's parameters (views, no copy of the travelling part),
    the payload must not change when the model trains on."""
    import torch

    from federation.modes import ModelArrays, get_arrays

    model = torch.nn.Linear(96, 256)
    names = ["weight", "bias"]
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(NEW["w"]))
    live = ModelArrays(model, names)
    assert list(live) == names and len(live) == 2
    assert np.shares_memory(live["weight"], model.weight.detach().numpy())
    reference = {k: v + 0.01 for k, v in get_arrays(model, names).items()}
    payload = encode_update(live, reference, method)
    before = decode_update(payload, reference)
    with torch.no_grad():
        model.weight.add_(1.0)
    after = decode_update(payload, reference)
    for name in names:
        np.testing.assert_array_equal(before[name], after[name])
    with pytest.raises(KeyError, match="nothing"):
        live["nothing"]
