"""Encrypt and decrypt NumPy arrays in a chosen slot layout (the data owner's side)."""

from __future__ import annotations

import numpy as np

from p3eft.fhe import packing
from p3eft.fhe.context import Ciphertext, CkksContext, Layout, SecretKey


def encrypt(
    ctx: CkksContext, values: np.ndarray, layout: Layout | None = None, level: int | None = None
) -> Ciphertext:
    """Encrypt ``values`` (a vector, or rows x length) under the context's public key."""
    x = np.asarray(values, dtype=np.float64)
    if layout is None:
        rows, length = (1, x.size) if x.ndim == 1 else x.shape
        layout = Layout(length, rows, length, "rows")
    return ctx.encrypt_slots(packing.pack(x, layout, ctx.slots), layout, level)


def encrypt_seeded_bytes(sk: SecretKey, ctx: CkksContext, values: np.ndarray, layout: Layout) -> bytes:
    """The data owner's compact upload: symmetric encryption, seed-compressed bytes (about half size)."""
    return sk.encrypt_seeded_bytes(
        ctx, packing.pack(np.asarray(values, dtype=np.float64), layout, ctx.slots), layout
    )


def encrypt_rows(ctx: CkksContext, rows: np.ndarray) -> list[Ciphertext]:
    """Encrypt a matrix with as many rows per ciphertext as fit (block = next power of two of the width)."""
    x = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    block = packing.next_pow2(x.shape[1])
    per = max(1, ctx.slots // block)
    return [
        encrypt(ctx, x[i : i + per], Layout(x.shape[1], min(per, x.shape[0] - i), block, "rows"))
        for i in range(0, x.shape[0], per)
    ]


def decrypt(sk: SecretKey, ctx: CkksContext, ct: Ciphertext) -> np.ndarray:
    """Decrypt and unpack; a one-row layout gives a vector, otherwise rows x length."""
    out = packing.unpack(sk.decrypt_slots(ctx, ct), ct.layout)
    return out[0] if ct.layout.rows == 1 else out


def decrypt_rows(sk: SecretKey, ctx: CkksContext, cts: list[Ciphertext]) -> np.ndarray:
    return np.vstack([np.atleast_2d(decrypt(sk, ctx, c)) for c in cts])
