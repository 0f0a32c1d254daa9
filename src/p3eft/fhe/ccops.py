"""Small ciphertext x ciphertext matrix products: attention scores, attention output, a LoRA branch.

All operands use a rows layout: row r of a matrix in slots [r*block, r*block + length). Building
blocks (ours):

* :func:`dot_rows` -- <a_r, b_r> for every row pair, left in slot r*block (1 level, log2(block) rotations);
* :func:`broadcast_rows` -- copy slot r*block over its whole block (1 level: a mask, then rotations);
* :func:`rotate_rows` -- row r takes row r+delta (cyclic), one rotation by delta*block; needs the
  ``rows_cyc`` layout (the row group stored twice) or a layout that fills all slots;
* :func:`sum_rows` -- add the rows up into row 0.

Attention for s tokens: ``score_diagonals(q, k)`` returns s ciphertexts, the delta-th holding
S[i, (i+delta) mod s] = <q_i, k_(i+delta)> at slot i*block. A row-wise softmax is then elementwise
across those s ciphertexts (the sum over delta is the row's denominator), and ``apply_diagonals(p, v)``
gives out_i = sum_j P[i, j] v_j.
"""

from __future__ import annotations

import numpy as np

from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.nonlinear import Approximation, Refresher


def dot_rows_steps(block: int) -> list[int]:
    return ops.rotate_sum_steps(block)


def broadcast_steps(block: int, slots: int) -> list[int]:
    return [(-s) % slots for s in ops.rotate_sum_steps(block)]


def rotate_rows_steps(rows: int, block: int) -> list[int]:
    return [d * block for d in range(1, rows)]


def sum_rows_steps(rows: int, block: int) -> list[int]:
    return ops.rotate_sum_steps(rows, block)


def _block_mask(ctx: CkksContext, layout: Layout) -> np.ndarray:
    mask = np.zeros(ctx.slots)
    mask[np.arange(layout.rows) * layout.block] = 1.0
    return mask


def dot_rows(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    """Slot r*block <- <a_r, b_r>; other slots hold partial sums (ignore them). One level."""
    prod = ops.multiply(ctx, a, b)
    out = ops.rotate_sum(ctx, prod, a.layout.block)
    out.layout = Layout(1, a.layout.rows, a.layout.block, "rows")
    return out


def broadcast_rows(ctx: CkksContext, s: Ciphertext, length: int) -> Ciphertext:
    """Slot r*block + j <- slot r*block for j < block (mask then rotate-and-sum backwards). One level."""
    lay = s.layout
    masked = ops.mul_plain(ctx, s, _block_mask(ctx, lay))
    out = masked
    step = 1
    while step < lay.block:
        out = ops.add(ctx, out, ops.rotate(ctx, out, -step))
        step *= 2
    out.layout = Layout(length, lay.rows, lay.block, "rows")
    return out


def rotate_rows(ctx: CkksContext, a: Ciphertext, delta: int) -> Ciphertext:
    """Row r <- row (r + delta) mod rows."""
    lay = a.layout
    delta %= lay.rows
    if delta == 0:
        return a
    if lay.form != "rows_cyc" and lay.rows * lay.block != ctx.slots:
        raise ValueError("rotate_rows needs the rows_cyc layout (or rows filling every slot)")
    return ops.rotate(ctx, a, delta * lay.block)


def sum_rows(ctx: CkksContext, a: Ciphertext) -> Ciphertext:
    """Row 0 <- sum of all rows (rows must be a power of two, or zero-padded to one)."""
    lay = a.layout
    out = ops.rotate_sum(ctx, a, 1 << (lay.rows - 1).bit_length(), lay.block)
    out.layout = Layout(lay.length, 1, lay.block, "rows")
    return out


def score_diagonals(ctx: CkksContext, q: Ciphertext, k: Ciphertext) -> list[Ciphertext]:
    """Attention scores as s diagonals: the delta-th holds <q_i, k_(i+delta mod s)> at slot i*block."""
    return [dot_rows(ctx, q, rotate_rows(ctx, k, d)) for d in range(q.layout.rows)]


def apply_diagonals(ctx: CkksContext, p_diags: list[Ciphertext], v: Ciphertext) -> Ciphertext:
    """out_i = sum_delta P_delta[i] * v_(i+delta): the attention output for score diagonals P. Two levels."""
    total = None
    for d, p in enumerate(p_diags):
        term = ops.multiply(ctx, broadcast_rows(ctx, p, v.layout.length), rotate_rows(ctx, v, d))
        total = term if total is None else ops.add(ctx, total, term)
    assert total is not None
    total.layout = Layout(v.layout.length, v.layout.rows, v.layout.block, "rows")
    return total


def lora_branch(ctx: CkksContext, a_rows: Ciphertext, x_rep: Ciphertext, b_cols: Ciphertext) -> Ciphertext:
    """h = B (A x) with A (r x d), B (d x r) and x all encrypted: ``a_rows`` holds A's rows, ``x_rep``
    holds x in every row block, ``b_cols`` holds B's columns as rows. Result in row 0. Three levels."""
    ax = dot_rows(ctx, a_rows, x_rep)
    ax_b = broadcast_rows(ctx, ax, b_cols.layout.length)
    return sum_rows(ctx, ops.multiply(ctx, ax_b, b_cols))


def softmax_diagonals(
    ctx: CkksContext,
    diags: list[Ciphertext],
    exp_approx: Approximation,
    recip_approx: Approximation,
    refresher: Refresher | None = None,
) -> list[Ciphertext]:
    """Row-wise softmax of scores held as diagonals (see :func:`score_diagonals`), all under encryption.

    exp of each diagonal, their sum (row i's denominator sits in slot i*block of every diagonal),
    one reciprocal, one product per diagonal. Scores must lie in ``exp_approx``'s range and the row
    sums of exps in ``recip_approx``'s; the caller picks both (no max-subtraction is possible under
    encryption, so the score range is an assumption to state, ours).
    """
    exps = [exp_approx.encrypted(ctx, d, refresher) for d in diags]
    denom = exps[0]
    for e in exps[1:]:
        denom = ops.add(ctx, denom, e)
    inv = recip_approx.encrypted(ctx, denom, refresher)
    out = []
    for e in exps:
        if refresher is not None and min(ctx.level(e), ctx.level(inv)) - 1 < refresher.min_level:
            e = refresher(e) if ctx.level(e) - 1 < refresher.min_level else e
            inv = refresher(inv) if ctx.level(inv) - 1 < refresher.min_level else inv
        out.append(ops.multiply(ctx, e, inv))
    return out
