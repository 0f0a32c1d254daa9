"""A plaintext-weight x ciphertext kernel for PrivTuner's token-row layout (ours, on the engine's BSGS).

The engine's :class:`~p3eft.fhe.linalg.BatchMatrix` fixes its block to next_pow2(n_in + n_out - 1);
PrivTuner's blocks are wider (``slots / rows_per_ct``, so that row rotations are cyclic), and the
pooler needs a kernel that only produces the first token's row. This kernel reuses the engine's
diagonal machinery (:class:`~p3eft.fhe.linalg._DiagonalKernel`: baby/giant steps, per-level
encoding cache) with diagonals for any block >= 2*width and an optional per-row mask folded into the
diagonals (free: the mask rides on the plaintext multiplications the product does anyway); the mask
may also be one factor per output slot (row and feature).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.linalg import _DiagonalKernel, _Tile
from p3eft.fhe.parallel import KernelRecipe, Product

# Encoded diagonals are cached only for small kernels, and for one level at a time: one diagonal at
# N=16384 and level 8 is 1.2 MB, so MiniLM's 512-diagonal kernels would hold 600 MB each per level.
CACHE_DIAGONALS = 64


class _LazyPlaintexts:
    """Encodes a diagonal when the product asks for it (large kernels: no cache)."""

    def __init__(self, ctx: CkksContext, tile: _Tile, level: int) -> None:
        self.ctx, self.tile, self.level = ctx, tile, level
        self.scale = ops.prime_at(ctx, level)

    def get(self, key: tuple[int, int]) -> Any:
        d = self.tile.diagonals.get(key)
        return None if d is None else self.ctx.encode(d, self.level, self.scale)


class RowsKernel(_DiagonalKernel):
    """y_r = W x_r for every row r of a ``rows_rep`` ciphertext (period ``width`` = n_in = n_out).

    Input: row r's ``width`` features repeated through its block. Output: ``rows`` form, y_r in
    slots [0, width) of its block and zeros in the rest of the block (rows whose ``row_mask`` is 0
    are all zero). ``row_mask`` may also be a (rows, width) factor per output slot (ours: per-slot
    input scales of the approximation that follows, e.g. GELU's per-channel range classes).
    """

    def __init__(self, weight: np.ndarray, block: int, slots: int, row_mask: np.ndarray | None = None):
        w_mat = np.asarray(weight, dtype=np.float64)
        n_out, n_in = w_mat.shape
        if n_out != n_in or 2 * n_in > block or slots % block:
            raise ValueError(f"RowsKernel takes a square matrix with 2*width <= block; got {w_mat.shape}")
        super().__init__(n_out, n_in, n_in, slots)
        self.block = block
        self._args = (w_mat, block, slots, row_mask)
        t = np.arange(slots)
        j = t % block
        rows = t // block
        rm = np.ones(slots // block) if row_mask is None else np.asarray(row_mask, dtype=np.float64)
        # a factor per row, or per (row, output feature): either way it multiplies the output slot,
        # so it folds into every diagonal's entry for that slot (free)
        row_factor = rm[rows] if rm.ndim == 1 else rm[rows, np.minimum(j, n_out - 1)]

        def diag(k: int) -> np.ndarray:
            col = (j + k) % n_in
            return np.where(j < n_out, w_mat[np.minimum(j, n_out - 1), col], 0.0) * row_factor

        self._add_tile((0, 0), diag)

    @cached_property
    def recipe(self) -> KernelRecipe:
        """How a pool worker rebuilds this kernel (:class:`~p3eft.fhe.parallel.KernelPool`)."""
        return KernelRecipe.of(RowsKernel, *self._args)

    def product(self, ctx: CkksContext, x: Ciphertext) -> Product:
        """This kernel's product with ``x``, for a pool to compute."""
        return Product(self, self.recipe, [x], 1, self._layout(ctx))

    def _layout(self, ctx: CkksContext) -> Layout:
        return Layout(self.n_out, ctx.slots // self.block, self.block, "rows")

    def galois_steps(self) -> list[int]:
        return self.bsgs_steps()

    def _plaintexts(self, ctx: CkksContext, tile: _Tile, level: int) -> Any:
        if len(tile.diagonals) > CACHE_DIAGONALS:
            return _LazyPlaintexts(ctx, tile, level)
        if level not in tile.encoded:
            tile.encoded.clear()  # one level at a time
        return super()._plaintexts(ctx, tile, level)

    def __call__(self, ctx: CkksContext, x: Ciphertext) -> Ciphertext:
        return self._apply(ctx, [x], 1, self._layout(ctx))[0]
