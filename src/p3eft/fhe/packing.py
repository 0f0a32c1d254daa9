"""Slot layouts: where the values of one or several rows sit in a CKKS slot vector.

The diagonal kernels want their input in particular shapes, and producing them on the data owner's
side (before encryption) costs nothing, while producing them under encryption costs rotations and a
level. These functions build the plaintext slot vectors; :mod:`p3eft.fhe.tensor` encrypts them.

* ``rows``       -- row r at ``r*block``; zeros elsewhere. Several rows per ciphertext.
* ``replicated`` -- one row, zero-padded to ``block`` (a power of two) and repeated through all slots.
* ``staggered``  -- one row, padded to window ``block``; copy c (at ``c*block``) is the row rotated left
  by ``c*shift``. This is the input of the square/tall BSGS kernel: one rotation then reaches a
  different column in each copy, so the spare slots do useful work (ours).
* ``rows_cyc``   -- like ``rows``, with the whole row group stored twice, so that a rotation by whole
  rows is cyclic (what attention's row rotations need).
* ``rows_rep``   -- several rows, each repeated with period ``length`` inside its own ``block``; the
  input of the batched kernel.
"""

from __future__ import annotations

import numpy as np

from p3eft.fhe.context import Layout


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def pack(values: np.ndarray, layout: Layout, slots: int) -> np.ndarray:
    """The slot vector holding ``values`` (shape ``(rows, length)`` or ``(length,)``) in ``layout``."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape != (layout.rows, layout.length):
        raise ValueError(
            f"values of shape {x.shape} do not match layout rows={layout.rows} length={layout.length}"
        )
    if layout.rows * layout.block > slots or layout.length > layout.block:
        raise ValueError(f"layout needs {layout.rows}x{layout.block} slots, only {slots} available")
    out = np.zeros(slots)
    if layout.form in ("rows", "plain"):
        for r in range(layout.rows):
            out[r * layout.block : r * layout.block + layout.length] = x[r]
    elif layout.form == "rows_cyc":
        if 2 * layout.rows * layout.block > slots:
            raise ValueError(f"rows_cyc layout needs {2 * layout.rows * layout.block} slots, only {slots}")
        for r in range(2 * layout.rows):
            out[r * layout.block : r * layout.block + layout.length] = x[r % layout.rows]
    elif layout.form == "rows_rep":
        reps = -(-layout.block // layout.length)
        for r in range(layout.rows):
            out[r * layout.block : (r + 1) * layout.block] = np.tile(x[r], reps)[: layout.block]
    elif layout.form in ("replicated", "staggered"):
        if layout.rows != 1 or slots % layout.block:
            raise ValueError(f"{layout.form} layout holds one row in a power-of-two window")
        row = np.zeros(layout.block)
        row[: layout.length] = x[0]
        copies = slots // layout.block
        for c in range(copies):
            shift = c * layout.shift if layout.form == "staggered" else 0
            out[c * layout.block : (c + 1) * layout.block] = np.roll(row, -shift)
    else:
        raise ValueError(f"unknown layout form {layout.form!r}")
    return out


def unpack(slots: np.ndarray, layout: Layout) -> np.ndarray:
    """Read the rows back (shape ``(rows, length)``); every form keeps row r unshifted at ``r*block``."""
    idx = np.arange(layout.rows)[:, None] * layout.block + np.arange(layout.length)[None, :]
    return np.asarray(slots)[idx]


def staggered_layout(length: int, slots: int, window: int | None = None) -> Layout:
    """The staggered layout for a vector of ``length``: window = next power of two, shift = window/copies."""
    w = window or next_pow2(length)
    if w > slots:
        raise ValueError(f"a window of {w} exceeds the {slots} slots")
    copies = min(slots // w, w)  # more copies than columns would repeat columns
    return Layout(length, 1, w, "staggered", w // copies)
