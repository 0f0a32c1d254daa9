"""The payload codec and the frame: bit-identical round trips and clear refusals of bad bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from p3eft.errors import ProtocolError
from p3eft.runtime import codec
from p3eft.runtime.frame import HEADER_BYTES, Frame, Kind, unpack
from p3eft.runtime.session import new_session_id

TORCH_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_tensors_round_trip_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=g) * 100
    t = base.to(dtype) if dtype != torch.bool else base > 0
    if dtype.is_floating_point:
        t[0, 0], t[0, 1], t[0, 2] = float("nan"), float("-inf"), -0.0
    back = codec.decode(codec.encode({"t": t, "tt": t.T}))
    assert back["t"].dtype == dtype and back["t"].shape == t.shape and _raw(back["t"]) == _raw(t)
    assert _raw(back["tt"]) == _raw(t.T)  # non-contiguous input


def test_every_payload_type_round_trips():
    value = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**200, -(2**90)],
        "floats": [0.1, -0.0, float("inf"), 1e-308],
        "text": "héllo ✓",
        "raw": b"\x00\xff" * 10,
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "array": np.arange(12, dtype=np.uint32).reshape(3, 4),
        "nested": {"a": [{"b": (1, 2)}]},
    }
    back = codec.decode(codec.encode(value))
    assert back["ints"] == value["ints"] and back["text"] == value["text"] and back["raw"] == value["raw"]
    assert struct.pack("<d", back["floats"][1]) == struct.pack("<d", -0.0)
    assert back["empty"].shape == (0, 4) and back["scalar"].item() == 3.5
    assert back["array"].dtype == np.uint32 and np.array_equal(back["array"], value["array"])
    assert back["nested"] == {"a": [{"b": [1, 2]}]}


def test_unsupported_types_are_refused():
    with pytest.raises(ProtocolError, match="cannot cross"):
        codec.encode({"x": object()})
    with pytest.raises(ProtocolError, match="keys must be strings"):
        codec.encode({1: 2})


def test_truncated_payload_is_refused_at_every_cut():
    data = codec.encode({"x": torch.arange(10.0), "s": "abc", "l": [1, 2.0]})
    for cut in range(len(data)):
        with pytest.raises(ProtocolError, match="truncated|unknown type tag"):
            codec.decode(data[:cut])


def test_lying_tensor_header_and_unknown_dtype_are_refused():
    data = bytearray(codec.encode(torch.zeros(2, 3)))
    # header: tag, dtype code, ndim, shape (2 x u64), nbytes u64
    bad_shape = bytearray(data)
    struct.pack_into("<Q", bad_shape, 3, 4)  # claim shape (4, 3) over 6 floats
    with pytest.raises(ProtocolError, match=r"shape \(4, 3\).*needs 48 bytes, header says 24"):
        codec.decode(bytes(bad_shape))
    bad_dtype = bytearray(data)
    bad_dtype[1] = 99
    with pytest.raises(ProtocolError, match="unknown dtype code 99"):
        codec.decode(bytes(bad_dtype))
    with pytest.raises(ProtocolError, match="trailing bytes"):
        codec.decode(bytes(data) + b"\x00")


def test_limits_are_enforced_before_allocation():
    big = codec.encode(torch.zeros(1000))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        codec.decode(big, codec.CodecLimits(max_bytes=100))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        codec.encode(torch.zeros(1000), codec.CodecLimits(max_bytes=100))
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nested deeper"):
        codec.encode(deep)


def test_frames_round_trip_and_refuse_corruption():
    sid = new_session_id()
    raw = Frame(Kind.REQUEST, sid, 7, "train_step", b"payload").pack()
    f = unpack(raw, 1 << 20)
    assert (f.kind, f.session, f.seq, f.method, f.payload) == (Kind.REQUEST, sid, 7, "train_step", b"payload")
    with pytest.raises(ProtocolError, match="truncated frame"):
        unpack(raw[:10], 1 << 20)
    with pytest.raises(ProtocolError, match="truncated frame"):
        unpack(raw[:-1], 1 << 20)
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    with pytest.raises(ProtocolError, match="checksum"):
        unpack(bytes(flipped), 1 << 20)
    with pytest.raises(ProtocolError, match="bad magic"):
        unpack(b"XXXX" + raw[4:], 1 << 20)
    with pytest.raises(ProtocolError, match="version"):
        unpack(raw[:4] + struct.pack("<H", 9) + raw[6:], 1 << 20)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        unpack(raw, 3)
    assert len(raw) == HEADER_BYTES + len("train_step") + len(b"payload")
