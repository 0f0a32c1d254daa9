"""Compact binary codec for channel payloads (ours).

The payload types of :mod:`p3eft.channel` -- tensors, arrays, numbers, strings, bytes and
lists/dicts of those -- are written as a tagged, length-prefixed byte string. Tensors and arrays
travel as their raw little-endian bytes with a dtype code and a shape, never as text, so a tensor
that crosses the network is bit-identical to the one the in-process channel would hand over.
Ciphertexts (PrivTuner) travel as ``bytes`` inside a dict that carries their context header.

Decoding is defensive: every length is checked against the bytes that are left and against the
size limit before anything is allocated, so a truncated or hostile payload ends in a
:class:`~p3eft.errors.ProtocolError` instead of a crash or an oversized allocation.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from p3eft.errors import ProtocolError

if sys.byteorder != "little":  # pragma: no cover - every platform we support is little-endian
    raise ImportError("p3eft.runtime.codec assumes a little-endian host")

# One-byte type tags.
_NONE, _TRUE, _FALSE, _INT, _BIGINT, _FLOAT = b"N", b"T", b"F", b"i", b"I", b"f"
_STR, _BYTES, _LIST, _DICT, _TENSOR, _ARRAY = b"s", b"b", b"l", b"d", b"t", b"a"

# Stable dtype codes: the wire format must not depend on library enum order.
_TORCH_DTYPES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float64: 2,
    torch.float16: 3,
    torch.bfloat16: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.uint8: 9,
    torch.bool: 10,
    torch.complex64: 11,
    torch.complex128: 12,
}
_TORCH_BY_CODE = {v: k for k, v in _TORCH_DTYPES.items()}
_NUMPY_DTYPES: dict[str, int] = {
    "float32": 1,
    "float64": 2,
    "float16": 3,
    "int8": 5,
    "int16": 6,
    "int32": 7,
    "int64": 8,
    "uint8": 9,
    "bool": 10,
    "complex64": 11,
    "complex128": 12,
    "uint16": 13,
    "uint32": 14,
    "uint64": 15,
}
_NUMPY_BY_CODE = {v: np.dtype(k) for k, v in _NUMPY_DTYPES.items()}

MAX_DEPTH = 32
MAX_NDIM = 16


@dataclass(frozen=True)
class CodecLimits:
    """Bounds a decoder enforces before it allocates (ours: defaults sized for per-layer weights)."""

    max_bytes: int = 256 * 2**20
    max_items: int = 1_000_000
    max_depth: int = MAX_DEPTH


def encode(value: Any, limits: CodecLimits | None = None) -> bytes:
    """Serialise a payload; refuse types that the channel contract does not allow."""
    parts: list[bytes | memoryview] = []
    _encode(value, parts, 0)
    out = b"".join(parts)
    if limits is not None and len(out) > limits.max_bytes:
        raise ProtocolError(f"payload of {len(out)} bytes exceeds the limit of {limits.max_bytes} bytes")
    return out


def decode(data: bytes | memoryview, limits: CodecLimits | None = None) -> Any:
    """Parse a payload written by :func:`encode`; any inconsistency is a :class:`ProtocolError`."""
    limits = limits or CodecLimits()
    view = memoryview(data).cast("B")
    if len(view) > limits.max_bytes:
        raise ProtocolError(f"payload of {len(view)} bytes exceeds the limit of {limits.max_bytes} bytes")
    reader = _Reader(view, limits)
    value = reader.value(0)
    if reader.pos != len(view):
        raise ProtocolError(f"payload has {len(view) - reader.pos} trailing bytes after its value")
    return value


def _encode(value: Any, parts: list[bytes | memoryview], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"payload nested deeper than {MAX_DEPTH} levels")
    if value is None:
        parts.append(_NONE)
    elif value is True:
        parts.append(_TRUE)
    elif value is False:
        parts.append(_FALSE)
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            parts.append(_INT + struct.pack("<q", value))
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            parts.append(_BIGINT + struct.pack("<I", len(raw)) + raw)
    elif isinstance(value, float):
        parts.append(_FLOAT + struct.pack("<d", value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        parts.append(_STR + struct.pack("<I", len(raw)) + raw)
    elif isinstance(value, bytes | bytearray):
        parts.append(_BYTES + struct.pack("<Q", len(value)))
        parts.append(bytes(value))
    elif isinstance(value, torch.Tensor):
        _encode_tensor(value, parts)
    elif isinstance(value, np.ndarray):
        _encode_array(value, parts)
    elif isinstance(value, list | tuple):
        parts.append(_LIST + struct.pack("<I", len(value)))
        for item in value:
            _encode(item, parts, depth + 1)
    elif isinstance(value, dict):
        parts.append(_DICT + struct.pack("<I", len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("payload dict keys must be strings")
            raw = key.encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
            _encode(item, parts, depth + 1)
    else:
        raise ProtocolError(f"type {type(value).__name__} cannot cross a party boundary")


def _shape_header(tag: bytes, code: int, shape: tuple[int, ...], nbytes: int) -> bytes:
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"tensor with {len(shape)} dimensions exceeds {MAX_NDIM}")
    return tag + struct.pack(f"<BB{len(shape)}QQ", code, len(shape), *shape, nbytes)


def _encode_tensor(t: torch.Tensor, parts: list[bytes | memoryview]) -> None:
    code = _TORCH_DTYPES.get(t.dtype)
    if code is None:
        raise ProtocolError(f"tensor dtype {t.dtype} cannot cross a party boundary")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
    parts.append(_shape_header(_TENSOR, code, tuple(t.shape), raw.nbytes))
    parts.append(memoryview(raw).cast("B"))


def _encode_array(a: np.ndarray, parts: list[bytes | memoryview]) -> None:
    code = _NUMPY_DTYPES.get(a.dtype.name)
    if code is None or a.dtype.byteorder == ">":
        raise ProtocolError(f"array dtype {a.dtype} cannot cross a party boundary")
    flat = np.ascontiguousarray(a).reshape(-1)
    parts.append(_shape_header(_ARRAY, code, tuple(a.shape), flat.nbytes))
    parts.append(memoryview(flat.view(np.uint8)).cast("B"))


class _Reader:
    def __init__(self, view: memoryview, limits: CodecLimits) -> None:
        self.view = view
        self.pos = 0
        self.limits = limits
        self.items = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise ProtocolError(
                f"truncated payload: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.view) - self.pos} left"
            )
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def count(self, what: str) -> int:
        (n,) = self.unpack("<I", what)
        self.items += n
        if self.items > self.limits.max_items:
            raise ProtocolError(f"payload has more than {self.limits.max_items} items")
        return n

    def text(self, what: str) -> str:
        (n,) = self.unpack("<I", what)
        try:
            return str(self.take(n, what), "utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"{what} is not valid UTF-8") from err

    def value(self, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise ProtocolError(f"payload nested deeper than {self.limits.max_depth} levels")
        tag = bytes(self.take(1, "type tag"))
        if tag == _NONE:
            return None
        if tag == _TRUE:
            return True
        if tag == _FALSE:
            return False
        if tag == _INT:
            return self.unpack("<q", "int")[0]
        if tag == _BIGINT:
            (n,) = self.unpack("<I", "big int length")
            return int.from_bytes(self.take(n, "big int"), "little", signed=True)
        if tag == _FLOAT:
            return self.unpack("<d", "float")[0]
        if tag == _STR:
            return self.text("string")
        if tag == _BYTES:
            (n,) = self.unpack("<Q", "bytes length")
            return bytes(self.take(n, "bytes"))
        if tag == _LIST:
            return [self.value(depth + 1) for _ in range(self.count("list length"))]
        if tag == _DICT:
            out = {}
            for _ in range(self.count("dict length")):
                key = self.text("dict key")
                out[key] = self.value(depth + 1)
            return out
        if tag in (_TENSOR, _ARRAY):
            return self.tensor(tag)
        raise ProtocolError(f"unknown type tag {tag!r} at offset {self.pos - 1}")

    def tensor(self, tag: bytes) -> torch.Tensor | np.ndarray:
        code, ndim = self.unpack("<BB", "tensor header")
        if ndim > MAX_NDIM:
            raise ProtocolError(f"tensor with {ndim} dimensions exceeds {MAX_NDIM}")
        shape = self.unpack(f"<{ndim}Q", "tensor shape") if ndim else ()
        (nbytes,) = self.unpack("<Q", "tensor size")
        if tag == _TENSOR:
            dtype = _TORCH_BY_CODE.get(code)
            itemsize = torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
        else:
            dtype = _NUMPY_BY_CODE.get(code)
            itemsize = dtype.itemsize if dtype is not None else 0
        if dtype is None:
            raise ProtocolError(f"unknown dtype code {code}")
        if any(d > self.limits.max_bytes for d in shape):
            raise ProtocolError(f"tensor shape {tuple(shape)} has a dimension beyond the size limit")
        numel = math.prod(shape)
        if numel * itemsize != nbytes:
            raise ProtocolError(
                f"tensor of shape {tuple(shape)} and dtype {dtype} needs {numel * itemsize} bytes, "
                f"header says {nbytes}"
            )
        raw = self.take(nbytes, "tensor data")
        try:
            if tag == _ARRAY:
                return np.frombuffer(raw, dtype=dtype).copy().reshape(shape)
            if numel == 0:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
        except (RuntimeError, ValueError, OverflowError, MemoryError) as err:
            raise ProtocolError(f"tensor of shape {tuple(shape)} cannot be built: {err}") from err
