"""Plaintext-matrix x ciphertext-vector products by the baby-step/giant-step diagonal method.

Diagonal method (Halevi-Shoup): y = sum_k D_k * rot(x, k), where D_k holds the matrix entry that
meets slot t after a rotation by k. Baby-step/giant-step: with k = h*G + g,
``y = sum_h rot( sum_g roll(D_k, h*G) * rot(x, g), h*G )``, so G-1 + H-1 rotations replace G*H.

Two packings (ours):

* :class:`StaggeredMatrix` (one vector; square, tall and wide matrices). The input sits in a window
  of w = next_pow2(n_in) slots, repeated in c = slots/w copies, copy q rotated left by q*K with
  K = w/c. One rotation by k < K then shows copy q the columns k + q*K, so K diagonals instead of w do
  the work and every multiplication uses all slots; a log2(c) rotate-and-sum adds the copies up,
  before the rescale so that its key-switching noise is divided by q_l with the rest (ours). The
  output is *replicated* (every copy holds y). Matrices with more than w rows or columns are cut into
  w x w tiles; several input ciphertexts (column blocks) share the baby steps of each.
* :class:`BatchMatrix` (several rows, e.g. 16 tokens of 128): each row in its own block, repeated
  inside the block so that rotations by k < n_in stay inside it; w = n_in diagonals per product,
  serving all rows at once.

Diagonals are encoded once per level and cached: the weights are fixed, the encoding is not free.
SEAL's public API has no hoisted rotations, so the baby steps are plain rotations, computed once per
input and shared by every tile and giant step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.packing import next_pow2, staggered_layout


def _split_bsgs(k_count: int) -> tuple[int, int]:
    """Baby-step count G (power of two near sqrt) and giant-step count H with G*H >= k_count."""
    g = 1 << max(0, round(math.log2(max(1, k_count)) / 2))
    return g, -(-k_count // g)


@dataclass
class _Tile:
    """The diagonals of one output block x input block, pre-rolled for the giant steps."""

    diagonals: dict[tuple[int, int], np.ndarray]  # (h, g) -> slot vector (only non-zero ones)
    encoded: dict[int, dict[tuple[int, int], Any]] = field(default_factory=dict)  # level -> plaintexts


class _DiagonalKernel:
    """Shared BSGS machinery: tiles of diagonals, baby steps, giant steps, per-level encoding cache."""

    def __init__(self, n_out: int, n_in: int, k_count: int, slots: int) -> None:
        self.n_out, self.n_in, self.slots = n_out, n_in, slots
        self.k_count = k_count
        self.baby, self.giant = _split_bsgs(k_count)
        self.tiles: dict[tuple[int, int], _Tile] = {}

    def _add_tile(self, key: tuple[int, int], diag_of_k: Any) -> None:
        diags = {}
        for k in range(self.k_count):
            d = diag_of_k(k)
            if np.any(d):
                h, g = divmod(k, self.baby)
                diags[(h, g)] = np.roll(d, h * self.baby)
        self.tiles[key] = _Tile(diags)

    def bsgs_steps(self) -> list[int]:
        return [g for g in range(1, self.baby)] + [h * self.baby for h in range(1, self.giant)]

    def _plaintexts(self, ctx: CkksContext, tile: _Tile, level: int) -> dict[tuple[int, int], Any]:
        if level not in tile.encoded:
            scale = ops.prime_at(ctx, level)
            tile.encoded[level] = {hg: ctx.encode(d, level, scale) for hg, d in tile.diagonals.items()}
        return tile.encoded[level]

    def prepare(self, ctx: CkksContext, level: int | None = None) -> None:
        """Encode every diagonal at ``level`` now (default: top), so the product itself is timed alone."""
        lvl = ctx.top_level if level is None else level
        for tile in self.tiles.values():
            self._plaintexts(ctx, tile, lvl)

    def _inputs(self, ctx: CkksContext, xs: list[Ciphertext]) -> tuple[list[Ciphertext], int, float]:
        """The input blocks checked and brought to one level; that level and their common scale."""
        for x in xs:
            ctx.check(x)
        lvl = min(ctx.level(x) for x in xs)
        ops.need_levels(ctx, xs[0], 1)
        xs = [ops.drop_to(ctx, x, lvl) for x in xs]
        scale = xs[0].seal.scale  # diagonals are encoded at q_l, so the product keeps the input's scale
        if not all(ops.same_scale(x.seal.scale, scale, 1e-9) for x in xs):
            raise ValueError("input blocks of one product must share a scale (encrypt them alike)")
        return xs, lvl, scale

    def baby_steps(self, ctx: CkksContext, xs: list[Any]) -> list[list[Any]]:
        """rot(x, g) for g < G, once per input block (SEAL ciphertexts; shared by every tile and giant
        step)."""
        babies: list[list[Any]] = []
        for x in xs:
            row = [x]
            for g in range(1, self.baby):
                row.append(ops.rotate_raw(ctx, x, g))
            babies.append(row)
        return babies

    def giant_sum(
        self, ctx: CkksContext, babies: list[list[Any]], lvl: int, block: int, giants: range
    ) -> Any | None:
        """sum over h in ``giants`` of rot(sum_g D_(h,g) * rot(x, g), h*G) for output block ``block``,
        before the rescale (None when every diagonal there is zero).

        Each giant step's inner sum is rotated whole, so sums over disjoint ``giants`` ranges add up
        (exact modular additions) to the very ciphertext one pass over all of them gives: what lets
        :class:`~p3eft.fhe.parallel.KernelPool` split one product across processes."""
        ev = ctx.evaluator
        scratch = sealapi.Ciphertext(ctx.seal)
        total = None
        for h in giants:
            inner = None
            for b, row in enumerate(babies):
                tile = self.tiles.get((block, b))
                if tile is None:
                    continue
                pts = self._plaintexts(ctx, tile, lvl)
                for g in range(self.baby):
                    pt = pts.get((h, g))
                    if pt is None:
                        continue
                    if inner is None:
                        inner = sealapi.Ciphertext(ctx.seal)
                        ev.multiply_plain(row[g], pt, inner)
                    else:
                        ev.multiply_plain(row[g], pt, scratch)
                        ev.add_inplace(inner, scratch)
            if inner is None:
                continue
            if h:
                inner = ops.rotate_raw(ctx, inner, h * self.baby)
            if total is None:
                total = inner
            else:
                ev.add_inplace(total, inner)
        return total

    def _finish(
        self,
        ctx: CkksContext,
        total: Any | None,
        x: Ciphertext,
        lvl: int,
        scale: float,
        layout: Layout,
        sum_copies: tuple[int, int] | None,
    ) -> Ciphertext:
        ev = ctx.evaluator
        if total is None:  # an all-zero block of the matrix: an encryption of zero, pre-rescale
            total = sealapi.Ciphertext(ctx.seal)
            ctx.encrypt_zero(total, lvl, scale * ops.prime_at(ctx, lvl))
        if sum_copies is not None:
            # add the copies up before the rescale (ours): the rotations' key-switching noise is then
            # divided by q_l with everything else instead of landing at full size on the result
            count, stride = sum_copies
            step = stride
            while step < count * stride:
                ev.add_inplace(total, ops.rotate_raw(ctx, total, step))
                step *= 2
        return ops.rescale(ctx, total, x.context_id, layout, scale)

    def _apply(
        self,
        ctx: CkksContext,
        xs: list[Ciphertext],
        out_blocks: int,
        layout: Layout,
        sum_copies: tuple[int, int] | None = None,
    ) -> list[Ciphertext]:
        xs, lvl, scale = self._inputs(ctx, xs)
        babies = self.baby_steps(ctx, [x.seal for x in xs])
        totals = [self.giant_sum(ctx, babies, lvl, i, range(self.giant)) for i in range(out_blocks)]
        return [self._finish(ctx, t, xs[0], lvl, scale, layout, sum_copies) for t in totals]


def staggered_steps(n_out: int, n_in: int, slots: int) -> list[int]:
    """The rotation steps a :class:`StaggeredMatrix` of this shape needs, without building it."""
    w = min(next_pow2(min(n_in, n_out)), slots)
    shift = staggered_layout(min(n_in, w), slots, w).shift
    baby, giant = _split_bsgs(shift)
    return list(range(1, baby)) + [h * baby for h in range(1, giant)] + ops.rotate_sum_steps(slots // w, w)


class StaggeredMatrix(_DiagonalKernel):
    """W (n_out x n_in) for one encrypted vector in staggered layout; output replicated, row blocks of w."""

    def __init__(self, weight: np.ndarray, slots: int, window: int | None = None) -> None:
        w_mat = np.asarray(weight, dtype=np.float64)
        if w_mat.ndim != 2:
            raise ValueError("weight must be a matrix")
        n_out, n_in = w_mat.shape
        # window from the smaller side: tall or wide matrices become several w x w tiles (ours)
        self.window = window or min(next_pow2(min(n_in, n_out)), slots)
        if self.window > slots:
            raise ValueError(f"window {self.window} exceeds {slots} slots")
        w = self.window
        self.in_layout = staggered_layout(min(n_in, w), slots, w)
        self.shift = self.in_layout.shift
        copies_used = w // self.shift
        super().__init__(n_out, n_in, self.shift, slots)
        self.in_blocks = -(-n_in // w)
        self.out_blocks = -(-n_out // w)
        t = np.arange(slots)
        q, j = t // w, t % w
        for i in range(self.out_blocks):
            for b in range(self.in_blocks):
                tile_w = w_mat[i * w : (i + 1) * w, b * w : (b + 1) * w]
                ro, ci = tile_w.shape

                def diag(k: int, tile_w: np.ndarray = tile_w, ro: int = ro, ci: int = ci) -> np.ndarray:
                    col = (j + k + q * self.shift + (j + k >= w) * self.shift) % w
                    valid = (j < ro) & (col < ci) & (q < copies_used)
                    return np.where(valid, tile_w[np.minimum(j, ro - 1), np.minimum(col, ci - 1)], 0.0)

                self._add_tile((i, b), diag)
        self.copies = slots // w

    def input_layouts(self) -> list[Layout]:
        w = self.window
        return [
            Layout(min(w, self.n_in - b * w), 1, w, "staggered", self.shift) for b in range(self.in_blocks)
        ]

    def output_layouts(self) -> list[Layout]:
        w = self.window
        return [Layout(min(w, self.n_out - i * w), 1, w, "replicated") for i in range(self.out_blocks)]

    def galois_steps(self) -> list[int]:
        return self.bsgs_steps() + ops.rotate_sum_steps(self.copies, self.window)

    def split_input(self, x: np.ndarray) -> list[np.ndarray]:
        w = self.window
        return [np.asarray(x)[b * w : (b + 1) * w] for b in range(self.in_blocks)]

    def __call__(self, ctx: CkksContext, xs: list[Ciphertext] | Ciphertext) -> list[Ciphertext]:
        xs = [xs] if isinstance(xs, Ciphertext) else list(xs)
        if len(xs) != self.in_blocks:
            raise ValueError(f"expected {self.in_blocks} input ciphertext(s), got {len(xs)}")
        for x, lay in zip(xs, self.input_layouts(), strict=True):
            if x.layout.form != "staggered" or x.layout.block != lay.block or x.layout.shift != lay.shift:
                raise ValueError(f"input layout {x.layout} does not match the kernel's {lay}")
        outs = self._apply(
            ctx,
            xs,
            self.out_blocks,
            Layout(self.window, 1, self.window, "replicated"),
            sum_copies=(self.copies, self.window),
        )
        for out, lay in zip(outs, self.output_layouts(), strict=True):
            out.layout = lay
        return outs

    @staticmethod
    def restagger_steps_for(length: int, slots: int, window: int | None = None) -> list[int]:
        """Rotation steps :meth:`restagger` needs for a replicated vector of ``length`` in ``window``."""
        lay = staggered_layout(length, slots, window)
        return [c * lay.shift for c in range(1, lay.block // lay.shift)]

    @staticmethod
    def restagger(ctx: CkksContext, y: Ciphertext) -> Ciphertext:
        """Replicated output -> staggered input for the next product (copies-1 rotations, one level)."""
        if y.layout.form != "replicated":
            raise ValueError("restagger takes a replicated ciphertext")
        w = y.layout.block
        lay = staggered_layout(y.layout.length, ctx.slots, w)
        copies_used = w // lay.shift
        total = None
        t = np.arange(ctx.slots)
        for c in range(ctx.slots // w):
            mask = (t // w == c).astype(float)
            src = ops.rotate(ctx, y, (c % copies_used) * lay.shift)
            part = ops.mul_plain(ctx, src, mask, lay)
            total = part if total is None else ops.add(ctx, total, part)
        assert total is not None
        total.layout = lay
        return total


class BatchMatrix(_DiagonalKernel):
    """W (n_out x n_in) applied to every row of a ``rows_rep`` ciphertext (several rows at once)."""

    def __init__(self, weight: np.ndarray, slots: int) -> None:
        w_mat = np.asarray(weight, dtype=np.float64)
        n_out, n_in = w_mat.shape
        self.block = next_pow2(n_in + n_out - 1)
        if self.block > slots:
            raise ValueError("matrix too large for the batched kernel; use StaggeredMatrix")
        super().__init__(n_out, n_in, n_in, slots)
        self.rows_max = slots // self.block
        t = np.arange(slots)
        j = t % self.block

        def diag(k: int) -> np.ndarray:
            col = (j + k) % n_in
            return np.where(j < n_out, w_mat[np.minimum(j, n_out - 1), col], 0.0)

        self._add_tile((0, 0), diag)

    def input_layout(self, rows: int) -> Layout:
        if rows > self.rows_max:
            raise ValueError(f"at most {self.rows_max} rows per ciphertext")
        return Layout(self.n_in, rows, self.block, "rows_rep")

    def galois_steps(self) -> list[int]:
        return self.bsgs_steps()

    def __call__(self, ctx: CkksContext, x: Ciphertext) -> Ciphertext:
        if x.layout.form != "rows_rep" or x.layout.block != self.block or x.layout.length != self.n_in:
            raise ValueError(
                f"input layout {x.layout} does not match the kernel (rows_rep, block {self.block})"
            )
        return self._apply(ctx, [x], 1, Layout(self.n_out, x.layout.rows, self.block, "rows"))[0]
