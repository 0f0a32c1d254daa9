"""Two backends for one network description: NumPy matrices (the twin) and ciphertexts (ours).

The encoder's forward and backward (:mod:`p3eft.privtuner.graph`) are written once against the
small set of operations below. :class:`PlainBackend` runs them on logical (seq, width) float64
matrices; :class:`CipherBackend` on lists of ciphertexts in the packing of
:mod:`p3eft.privtuner.packing`. Since both run the same sequence of operations, the twin reproduces
the encrypted path's approximations, ranges and order of operations by construction, and the only
difference left is CKKS noise and the refresh's rounding.

Operation semantics (every slot of a row holds a value the twin computes too):

* ``lin(L, x)``: x W^T + b per row (W, b padded to ``width``), optionally only some rows, optionally
  times a public factor per slot (an approximation's per-slot input scale, folded into the kernel);
* ``feature_sum(x, n, s)``: every slot of row r <- s_r * sum_{j<n} x[r, j] (s a scalar, or one
  public factor per row: LayerNorm's per-position variance scale);
* ``head_sum(x, dh, H, s)``: slot j < H*dh of row r <- s * sum over j's head of x[r, .]; others 0;
* ``rot_rows(x, d)``: row r <- row (r + d) mod seq;
* ``row_sum(x)``: every row <- sum of all rows;
* ``fn(site, x, part)``: the site's (approximate or exact) function, element-wise; ``part`` names the
  FFN chunk of a per-slot site (GELU, GELU': one polynomial per range class of slots).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.fhe import nonlinear, ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout, LevelError
from p3eft.fhe.nonlinear import Refresher
from p3eft.fhe.parallel import KernelPool
from p3eft.privtuner.approx import FnSet, SlotPart
from p3eft.privtuner.kernels import RowsKernel
from p3eft.privtuner.packing import PackingSpec


def row_factor(scale: float | np.ndarray) -> float | np.ndarray:
    """A scalar factor, or one factor per row as a (seq, 1) column that broadcasts over the row."""
    return scale if np.isscalar(scale) else np.asarray(scale, dtype=np.float64).reshape(-1, 1)


@dataclass
class Linear:
    """A frozen plaintext linear map on padded features: y = W x + b, on the rows in ``row_mask``."""

    key: str
    weight: np.ndarray  # (width, width)
    bias: np.ndarray | None  # (width,)
    row_mask: np.ndarray | None = None  # (seq,)
    out_scale: np.ndarray | None = None  # (seq, width): output factor per slot (free: in the kernel)
    out_offset: np.ndarray | None = None  # (seq, width): subtracted after the factor (free: in the bias)

    def factor(self) -> np.ndarray | None:
        """The output factor per logical slot (seq, width), per row (seq,), or None (all ones)."""
        if self.out_scale is None:
            return self.row_mask
        if self.row_mask is None:
            return self.out_scale
        return self.row_mask[:, None] * self.out_scale


@dataclass
class RangeFlag:
    """An approximation input that left its calibrated range (the twin's out-of-range report)."""

    site: str
    observed: tuple[float, float]
    allowed: tuple[float, float]
    slot_class: int | None = None  # the range class of a per-slot site (GELU, GELU')


class PlainBackend:
    """Logical matrices in NumPy; records ranges (calibration) and flags out-of-range inputs."""

    def __init__(self, spec: PackingSpec, fns: FnSet, record: bool = False) -> None:
        self.spec, self.fns, self.record = spec, fns, record
        self.ranges: dict[str, list[float]] = {}
        self.row_ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # site -> per-row (min, max)
        # per-slot sites: site -> chunk -> per-slot (min, max), each (seq, width)
        self.slot_ranges: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.flags: list[RangeFlag] = []
        self.max_abs = 0.0
        # the largest |value| / refresh bound over every operation (ours): above 1, a refresh of that
        # value would hide it with lambda - log2(ratio) bits instead of lambda
        self.bound_ratio = 0.0

    def _track(self, x: np.ndarray) -> np.ndarray:
        bound = self.fns.refresh_bound
        if self.record or bound is not None:
            v = float(np.max(np.abs(x)))
            self.max_abs = max(self.max_abs, v)
            if bound is not None:
                self.bound_ratio = max(self.bound_ratio, v / bound)
        return x

    def const(self, m: np.ndarray) -> np.ndarray:
        return np.array(m, dtype=np.float64)

    def lin(self, lin: Linear, x: np.ndarray) -> np.ndarray:
        y = x @ lin.weight.T
        if lin.bias is not None:
            y = y + lin.bias[None, :]
        if lin.row_mask is not None:
            y = y * lin.row_mask[:, None]
        if lin.out_scale is not None:
            y = y * lin.out_scale
        if lin.out_offset is not None:
            y = y - lin.out_offset
        return self._track(y)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._track(a + b)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._track(a - b)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._track(a * b)

    def mul_plain(self, a: np.ndarray, p: np.ndarray | float) -> np.ndarray:
        return self._track(a * p)

    def add_plain(self, a: np.ndarray, p: np.ndarray | float) -> np.ndarray:
        return self._track(a + p)

    def neg(self, a: np.ndarray) -> np.ndarray:
        return self._track(-a)

    def rot_rows(self, a: np.ndarray, delta: int) -> np.ndarray:
        return self._track(np.roll(a, -delta, axis=0))

    def feature_sum(self, a: np.ndarray, n: int, scale: float | np.ndarray) -> np.ndarray:
        s = row_factor(scale) * a[:, :n].sum(axis=1, keepdims=True)
        return self._track(np.repeat(s, a.shape[1], axis=1))

    def head_sum(self, a: np.ndarray, dh: int, heads: int, scale: float) -> np.ndarray:
        out = np.zeros_like(a)
        for h in range(heads):
            out[:, h * dh : (h + 1) * dh] = scale * a[:, h * dh : (h + 1) * dh].sum(axis=1, keepdims=True)
        return self._track(out)

    def row_sum(self, a: np.ndarray) -> np.ndarray:
        return self._track(np.repeat(a.sum(axis=0, keepdims=True), a.shape[0], axis=0))

    def fn(self, site: str, x: np.ndarray, part: int | None = None) -> np.ndarray:
        f = self.fns.get_fn(site, part)
        lo, hi = float(np.min(x)), float(np.max(x))
        if self.record:
            r = self.ranges.setdefault(site, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            rlo, rhi = np.min(x, axis=1), np.max(x, axis=1)
            if site in self.row_ranges:
                plo, phi = self.row_ranges[site]
                rlo, rhi = np.minimum(plo, rlo), np.maximum(phi, rhi)
            self.row_ranges[site] = (rlo, rhi)
            if part is not None:
                parts = self.slot_ranges.setdefault(site, {})
                slo, shi = parts.get(part, (x, x))
                parts[part] = (np.minimum(slo, x), np.maximum(shi, x))
        if isinstance(f, SlotPart):
            for k, observed, allowed in f.out_of_range(x):
                self.flags.append(RangeFlag(site, observed, allowed, k))
        elif not f.exact and (lo < f.lo or hi > f.hi):
            self.flags.append(RangeFlag(site, (lo, hi), (f.lo, f.hi)))
        return self._track(f.plain(x))

    def logits(self, per_label: list[np.ndarray]) -> np.ndarray:
        return self._track(np.array([t[0, 0] for t in per_label]))

    def level(self, a: Any) -> int:
        return 0


@dataclass
class CipherStats:
    """Where an encrypted pass spends its time (seconds, wall) and how many refreshes it made."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, what: str, t0: float, n: int = 1) -> None:
        self.seconds[what] += time.perf_counter() - t0
        self.counts[what] += n

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "counts": dict(self.counts)}


# relative gap between a ciphertext's true scale and the nominal one above which a refresh brings it
# back (ours; see CipherBackend._renormalise)
SCALE_DRIFT_RESET = 2.0**-10


class _RenormalisingRefresher:
    """The backend's refresher as the engine's functions see it: a refresh that returns the nominal
    scale (:meth:`CipherBackend._refresh_nominal`)."""

    def __init__(self, backend: CipherBackend) -> None:
        self._backend = backend

    @property
    def min_level(self) -> int:
        return self._backend.refresher.min_level

    def __call__(self, ct: Ciphertext) -> Ciphertext:
        return self._backend._refresh_nominal(ct)


class CipherBackend:
    """Logical matrices as ``spec.cts`` ciphertexts each; refreshes through ``refresher`` when a
    ciphertext would drop below the refresh floor."""

    def __init__(
        self,
        ctx: CkksContext,
        spec: PackingSpec,
        fns: FnSet,
        refresher: Refresher,
        pool: KernelPool | None = None,
    ) -> None:
        self.ctx, self.spec, self.fns, self.refresher = ctx, spec, fns, refresher
        self.pool = pool  # plaintext-weight products run there when set (p3eft.fhe.parallel)
        self.kernels: dict[str, RowsKernel] = {}
        self.stats = CipherStats()
        self._masks: dict[Any, np.ndarray] = {}
        self._coeffs: dict[tuple[str, int], tuple[SlotPart, list[np.ndarray]]] = {}
        self._inner_refresher = _RenormalisingRefresher(self)

    # ----- levels ------------------------------------------------------------------------------
    @property
    def floor(self) -> int:
        return self.refresher.min_level

    def level(self, a: list[Ciphertext]) -> int:
        return min(self.ctx.level(c) for c in a)

    def _fresh(self, c: Ciphertext, need: int) -> Ciphertext:
        """Refresh ``c`` if it has fewer than ``need`` levels above the floor, with the refresher's
        bound (the configured ceiling: the engine's integer mask makes the refresh's precision
        independent of the bound, and |value| must stay below it for lambda bits of hiding)."""
        if self.ctx.level(c) - need >= self.floor:
            return c
        room = self.ctx.top_level - self.floor
        if need > room:  # no refresh can help (encrypted.check_chain_depth refuses such chains up front)
            raise LevelError(
                f"an operation needs {need} levels above the refresh floor (level {self.floor}), and a "
                f"refreshed ciphertext of {self.ctx.params.name} has {room}: choose a deeper parameter set"
            )
        t0 = time.perf_counter()
        # refreshes twice when the scale reset after the refresh took a level this phase needs
        out = nonlinear.ensure_levels(self.ctx, c, need, self._inner_refresher)
        self.stats.add("refresh", t0)
        return out

    def _refresh_nominal(self, c: Ciphertext) -> Ciphertext:
        """One refresh whose answer has the nominal scale (ours).

        A drifted scale is reset before the refresh when ``c`` has a level above the refresh floor
        to spend: that level is free (the masked request drops to the floor anyway, and the refresh
        keeps the scale), and the product runs on the request's few primes instead of the top
        level's. Only a ciphertext already at the floor is reset after the refresh, at the cost of
        one of the refreshed ciphertext's levels."""
        if self._drifted(c) and self.ctx.level(c) > self.floor:
            c = self._renormalise(c)
        return self._renormalise(self.refresher(c))

    def _drifted(self, c: Ciphertext) -> bool:
        return abs(c.seal.scale / self.ctx.params.scale - 1.0) > SCALE_DRIFT_RESET

    def _renormalise(self, c: Ciphertext) -> Ciphertext:
        """Bring a ciphertext back to the nominal scale (a product by 1, one level) when its true
        scale has drifted by more than :data:`SCALE_DRIFT_RESET` (ours).

        Why: the engine keeps every ciphertext's true scale, and a product of scales s_a s_b / q_l
        doubles the relative gap to 2^40 at each squaring; the refresh keeps the scale, so squaring
        chains (softmax rounds, Goldschmidt, Newton) compound the gap across refreshes until a product
        overflows the modulus (MiniLM: "scale out of bounds" inside a softmax reciprocal). Reset at a
        refresh, the gap stays below 2^(levels between refreshes) x the threshold. The value is
        unchanged (the product by 1 lands exactly on the nominal scale), so the twin has no
        counterpart operation."""
        if not self._drifted(c):
            return c
        layout = c.layout
        out = ops.mul_plain(self.ctx, c, 1.0, scale=self.ctx.params.scale)
        out.layout = layout
        self.stats.counts["scale_resets"] += 1
        return out

    def ready(self, a: list[Ciphertext], need: int = 1) -> list[Ciphertext]:
        return [self._fresh(c, need) for c in a]

    # ----- packing -----------------------------------------------------------------------------
    def _slots(self, p: np.ndarray | float) -> list[np.ndarray | float]:
        """A plaintext operand as slot vectors: scalars stay scalars, (width,) rows repeat, (seq, width)."""
        if np.isscalar(p):
            return [float(p)] * self.spec.cts
        m = np.asarray(p, dtype=np.float64)
        if m.ndim == 1:
            m = np.repeat(m[None, :], self.spec.seq, axis=0)
        return self.spec.pack_matrix(m)

    def const(self, m: np.ndarray) -> list[Ciphertext]:
        """Encrypt a public plaintext matrix (only used for public constants)."""
        lay = self.spec.layout()
        return [self.ctx.encrypt_slots(s, lay) for s in self.spec.pack_matrix(np.asarray(m))]

    def _mask(self, key: Any, build: Any) -> np.ndarray:
        if key not in self._masks:
            self._masks[key] = build()
        return self._masks[key]

    # ----- linear ------------------------------------------------------------------------------
    def _kernel(self, lin: Linear) -> RowsKernel:
        if lin.key not in self.kernels:
            self.kernels[lin.key] = RowsKernel(lin.weight, self.spec.block, self.ctx.slots, None)
        return self.kernels[lin.key]

    def _replicate(self, c: Ciphertext) -> Ciphertext:
        """rows form (zeros beyond width) -> rows_rep (period width through the block); no level."""
        cover = self.spec.width
        while cover < self.spec.block:
            c = ops.add(self.ctx, c, ops.rotate(self.ctx, c, -cover))
            cover *= 2
        c.layout = self.spec.layout()
        return c

    def lin(self, lin: Linear, x: list[Ciphertext]) -> list[Ciphertext]:
        t0 = time.perf_counter()
        k = self._kernel(lin)
        r = self.spec.rows_per_ct
        factor = lin.factor()
        xs = self.ready(x)
        masks = [None if factor is None else self.spec.physical(factor, ci) for ci in range(len(xs))]
        kernels: list[RowsKernel | None] = []
        for ci, rm in enumerate(masks):
            if rm is not None and not np.any(rm):
                kernels.append(None)  # all rows masked out
            elif rm is not None and not np.all(rm == 1.0):  # a row mask or per-slot scales
                key = (lin.key, ci)
                if key not in self.kernels:
                    self.kernels[key] = RowsKernel(lin.weight, self.spec.block, self.ctx.slots, rm)
                kernels.append(self.kernels[key])
            else:
                kernels.append(k)
        products = iter(
            self._products([(kk, c) for kk, c in zip(kernels, xs, strict=True) if kk is not None])
        )
        out = []
        for ci, (c, kk, rm) in enumerate(zip(xs, kernels, masks, strict=True)):
            if kk is None:
                # a fresh encryption of zeros (SEAL refuses a product by 0, whose result would be
                # transparent)
                lvl = max(self.ctx.level(c) - 1, 0)
                y = self.ctx.encrypt_slots(np.zeros(self.ctx.slots), self.spec.layout(), lvl)
            else:
                y = self._replicate(next(products))
            b = np.zeros((r, self.spec.width))
            if lin.bias is not None:
                b = np.repeat(lin.bias[None, :], r, axis=0)
                if rm is not None:
                    b = b * (rm[:, None] if rm.ndim == 1 else rm)
            if lin.out_offset is not None:
                b = b - self.spec.physical(lin.out_offset, ci)
            if np.any(b):
                y = ops.add_plain(self.ctx, y, self.spec.pack_rows(b))
            out.append(y)
        self.stats.add("linear", t0, len(out))
        return out

    def _products(self, pairs: list[tuple[RowsKernel, Ciphertext]]) -> list[Ciphertext]:
        """The kernels' products: on the session's process pool when it has one, else here."""
        if self.pool is None:
            return [kk(self.ctx, c) for kk, c in pairs]
        return [ys[0] for ys in self.pool.products(self.ctx, [kk.product(self.ctx, c) for kk, c in pairs])]

    # ----- element-wise --------------------------------------------------------------------------
    def _addable(self, x: Ciphertext, y: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
        """Operands an addition takes without going below the refresh floor. At one level with
        scales apart (a LayerNorm output after its Newton iterations meets the FFN's output), the
        engine brings one onto the other's scale at the cost of a level (:func:`ops.align_scales`),
        so one at the floor is refreshed first."""
        if ops.same_scale(x.seal.scale, y.seal.scale) or self.ctx.level(x) != self.ctx.level(y):
            return x, y
        self.stats.counts["scale_aligns"] += 1
        return self._fresh(x, 1), y

    def _add(self, x: Ciphertext, y: Ciphertext) -> Ciphertext:
        """One addition that stays at or above the refresh floor (:meth:`_addable`): every sum of two
        ciphertexts that may carry different scales goes through here."""
        return ops.add(self.ctx, *self._addable(x, y))

    def add(self, a: list[Ciphertext], b: list[Ciphertext]) -> list[Ciphertext]:
        return [self._add(x, y) for x, y in zip(a, b, strict=True)]

    def sub(self, a: list[Ciphertext], b: list[Ciphertext]) -> list[Ciphertext]:
        return [ops.sub(self.ctx, *self._addable(x, y)) for x, y in zip(a, b, strict=True)]

    def mul(self, a: list[Ciphertext], b: list[Ciphertext]) -> list[Ciphertext]:
        t0 = time.perf_counter()
        out = [ops.multiply(self.ctx, x, y) for x, y in zip(self.ready(a), self.ready(b), strict=True)]
        self.stats.add("ct_x_ct", t0, len(out))
        return out

    def mul_plain(self, a: list[Ciphertext], p: np.ndarray | float) -> list[Ciphertext]:
        t0 = time.perf_counter()
        out = [ops.mul_plain(self.ctx, x, s) for x, s in zip(self.ready(a), self._slots(p), strict=True)]
        self.stats.add("ct_x_pt", t0, len(out))
        return out

    def add_plain(self, a: list[Ciphertext], p: np.ndarray | float) -> list[Ciphertext]:
        return [ops.add_plain(self.ctx, x, s) for x, s in zip(a, self._slots(p), strict=True)]

    def neg(self, a: list[Ciphertext]) -> list[Ciphertext]:
        return [ops.negate(self.ctx, x) for x in a]

    # ----- rotations ----------------------------------------------------------------------------
    def _row_masks(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        def build() -> np.ndarray:
            r, blk = self.spec.rows_per_ct, self.spec.block
            lo = np.zeros(self.ctx.slots)
            lo[: (r - b) * blk] = 1.0
            return lo

        lo = self._mask(("rowlo", b), build)
        return lo, 1.0 - lo

    def rot_rows(self, a: list[Ciphertext], delta: int) -> list[Ciphertext]:
        t0 = time.perf_counter()
        spec = self.spec
        delta %= spec.seq
        if delta == 0:
            return list(a)
        if spec.cts == 1:  # rows repeat with period seq: one cyclic rotation
            out = [ops.rotate(self.ctx, a[0], delta * spec.block)]
            self.stats.add("rotations", t0)
            return out
        q, b = divmod(delta, spec.rows_per_ct)
        n = spec.cts
        out = []
        for c in range(n):
            first = a[(c + q) % n]
            if b == 0:
                out.append(first)
                continue
            r1 = ops.rotate(self.ctx, first, b * spec.block)
            if n == 1:
                out.append(r1)
                continue
            second = a[(c + q + 1) % n]
            r2 = ops.rotate(self.ctx, second, b * spec.block)
            lo, hi = self._row_masks(b)
            r1, r2 = self._fresh(r1, 1), self._fresh(r2, 1)
            # the two source ciphertexts may have different scales (one refreshed, one not)
            out.append(self._add(ops.mul_plain(self.ctx, r1, lo), ops.mul_plain(self.ctx, r2, hi)))
        self.stats.add("rotations", t0, len(out))
        return out

    def _window_sum(self, c: Ciphertext, n: int) -> Ciphertext:
        """Slot j <- sum of slots j..j+n-1 (binary decomposition of n; left rotations)."""
        partial = {1: c}
        m = 1
        while 2 * m <= n:
            partial[2 * m] = ops.add(self.ctx, partial[m], ops.rotate(self.ctx, partial[m], m))
            m *= 2
        total, offset = None, 0
        while m >= 1:
            if n & m:
                term = ops.rotate(self.ctx, partial[m], offset) if offset else partial[m]
                total = term if total is None else ops.add(self.ctx, total, term)
                offset += m
            m //= 2
        assert total is not None
        return total

    def _spread(self, c: Ciphertext, span: int) -> Ciphertext:
        """Slot j*span... <- copy the value at the start of every span-group over the group (right)."""
        step = 1
        while step < span:
            c = ops.add(self.ctx, c, ops.rotate(self.ctx, c, -step))
            step *= 2
        return c

    def feature_sum(self, a: list[Ciphertext], n: int, scale: float | np.ndarray) -> list[Ciphertext]:
        """Every slot of a row <- scale * (sum of its first n features); ``scale`` a scalar or one public
        factor per row, folded into the mask either way (no extra level).

        n == width: on a rows_rep input every window of ``width`` slots starting in [0, width) stays
        inside the block and covers one whole period, so all those slots hold the total; keep them
        (mask times scale, one level) and copy them into the block's second half (one rotation).
        n < width (padded features): only the window at slot 0 is the sum of the first n features;
        keep slot 0 and spread it over the block (log2(block) rotations)."""
        t0 = time.perf_counter()
        blk, w = self.spec.block, self.spec.width
        whole = n == w

        def build() -> np.ndarray:
            m = np.zeros(self.ctx.slots)
            for start in range(0, self.ctx.slots, blk):
                m[start : start + (w if whole else 1)] = 1.0
            return m

        mask = self._mask(("fsum", blk, whole), build)
        if np.isscalar(scale):
            factors = [mask * float(scale)] * self.spec.cts
        else:  # row r's factor in every slot of its block (rows_rep packing of a constant row)
            rows = np.repeat(np.asarray(scale, dtype=np.float64)[:, None], w, axis=1)
            factors = [mask * v for v in self.spec.pack_matrix(rows)]
        out = []
        for c, factor in zip(self.ready(a), factors, strict=True):
            s = self._window_sum(c, n)
            s = ops.mul_plain(self.ctx, s, factor)
            if whole:
                out.append(self._replicate(s))
            else:
                s = self._spread(s, blk)
                s.layout = self.spec.layout()
                out.append(s)
        self.stats.add("feature_sums", t0, len(out))
        return out

    def head_sum(self, a: list[Ciphertext], dh: int, heads: int, scale: float) -> list[Ciphertext]:
        t0 = time.perf_counter()
        blk = self.spec.block

        def build() -> np.ndarray:
            m = np.zeros(self.ctx.slots)
            for h in range(heads):
                m[h * dh :: blk] = 1.0
            return m

        mask = self._mask(("heads", dh, heads), build)
        out = []
        for c in self.ready(a):
            s = ops.rotate_sum(self.ctx, c, dh)
            s = ops.mul_plain(self.ctx, s, mask * scale)
            s = self._spread(s, dh)
            out.append(self._replicate(s))
        self.stats.add("head_sums", t0, len(out))
        return out

    def row_sum(self, a: list[Ciphertext]) -> list[Ciphertext]:
        t0 = time.perf_counter()
        total = a[0]
        for c in a[1:]:
            total = self._add(total, c)
        total = ops.rotate_sum(self.ctx, total, min(self.spec.rows_per_ct, self.spec.seq), self.spec.block)
        total.layout = self.spec.layout()
        self.stats.add("row_sums", t0)
        return [total] * self.spec.cts

    def _packed_coeffs(self, site: str, part: int, f: SlotPart) -> list[np.ndarray]:
        """A per-slot site's coefficients as slot vectors, (degree + 1, slots) per ciphertext."""
        hit = self._coeffs.get((site, part))
        if hit is None or hit[0] is not f:
            per_power = [self.spec.pack_matrix(m) for m in f.coeffs]
            hit = (f, [np.stack([p[ci] for p in per_power]) for ci in range(self.spec.cts)])
            self._coeffs[(site, part)] = hit
        return hit[1]

    def fn(self, site: str, x: list[Ciphertext], part: int | None = None) -> list[Ciphertext]:
        t0 = time.perf_counter()
        f = self.fns.get_fn(site, part)
        packed = self._packed_coeffs(site, part, f) if isinstance(f, SlotPart) and part is not None else None
        out = []
        for ci, c in enumerate(x):
            c = self._fresh(c, f.first_phase_depth)
            if packed is not None:
                assert isinstance(f, SlotPart)
                y = f.encrypted(self.ctx, c, packed[ci], self._inner_refresher)
            else:
                assert not isinstance(f, SlotPart)
                y = f.encrypted(self.ctx, c, self._inner_refresher)
            y.layout = self.spec.layout()
            out.append(y)
        self.stats.add("nonlinear", t0, len(out))
        return out

    def logits(self, per_label: list[list[Ciphertext]]) -> Ciphertext:
        """Label c's row 0 moved to row c of one ciphertext (no level)."""
        total = None
        for c, t in enumerate(per_label):
            r = ops.rotate(self.ctx, t[0], -c * self.spec.block) if c else t[0]
            total = r if total is None else ops.add(self.ctx, total, r)
        assert total is not None
        total.layout = self.spec.logits_layout(len(per_label))
        return total


def galois_steps(spec: PackingSpec, heads: int, head_dim: int) -> list[int]:
    """Every rotation step :class:`CipherBackend` uses for this geometry (for the data owner's keygen)."""
    slots, blk, w = spec.slots, spec.block, spec.width
    k = RowsKernel(np.eye(w), blk, slots)
    steps = set(k.galois_steps())
    cover = w
    while cover < blk:  # replicate
        steps.add(-cover)
        cover *= 2
    m = 1
    span = w if spec.hidden == w else blk  # padded features: feature sums spread over the block
    while m < span:  # window sums (and their offsets), spreads
        steps.update({m, -m})
        m *= 2
    for n in (spec.hidden,):
        offset = 0
        mm = 1 << (n.bit_length() - 1)
        while mm >= 1:
            if n & mm:
                if offset:
                    steps.add(offset)
                offset += mm
            mm //= 2
    steps.update(ops.rotate_sum_steps(head_dim))
    rows = min(spec.rows_per_ct, spec.seq)
    steps.update(b * blk for b in range(1, rows))  # row rotations
    steps.update(-c * blk for c in range(1, 8))  # logits rows
    steps.update(ops.rotate_sum_steps(rows, blk))
    return sorted({s % slots for s in steps} - {0})


__all__ = ["Linear", "PlainBackend", "CipherBackend", "galois_steps", "Layout"]
