"""Checking the shape and dtype of tensors a party receives, with a clear refusal.

The codec already refuses tensors whose header disagrees with their bytes; this is the next line:
a well-formed tensor of the wrong dtype or shape for the method. Roles call :func:`expect_tensor`
on their inputs so a bad request ends in a :class:`~p3eft.errors.ProtocolError` naming the
argument, not in a shape error deep inside a matmul.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from p3eft.errors import ProtocolError


def expect_tensor(
    value: Any,
    name: str,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Return ``value`` if it is a tensor of ``dtype`` and ``shape`` (None = any size there)."""
    if not isinstance(value, torch.Tensor):
        raise ProtocolError(f"{name} must be a tensor, got {type(value).__name__}")
    allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype or ())
    if allowed and value.dtype not in allowed:
        raise ProtocolError(f"{name} has dtype {value.dtype}, expected {' or '.join(map(str, allowed))}")
    if shape is not None:
        ok = value.dim() == len(shape) and all(
            s is None or s == v for s, v in zip(shape, value.shape, strict=True)
        )
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ProtocolError(f"{name} has shape {tuple(value.shape)}, expected {want}")
    return value
