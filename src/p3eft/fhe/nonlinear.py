"""Non-linear functions under encryption (model owner's side), each with a stated range, degree, depth.

Every function is an :class:`Approximation`: the same arithmetic runs on NumPy (:meth:`plain`) and on
ciphertexts (:meth:`encrypted`), so tests can check the encrypted result against the plaintext
approximation (CKKS error only) and the plaintext approximation against the exact function on its
range (approximation error only). Choices of range, degree and iteration count are ours.

Outside the range (ours): the value is that of the same construction, not of the function, but every
approximation is built so that, on the *guard range* (``guard`` = 4 times the range: [4 lo, 4 hi] for
a range around zero, (0, 4 hi] for a positive one), no intermediate value exceeds ``peak`` (stated
per function). Under encryption a slot only disturbs the other slots if its value wraps modulo the
ciphertext modulus; ``encrypted`` refuses to let a result whose ``peak`` would not fit the bottom
prime land on level 0, so a slot anywhere in the guard range leaves the other slots within their
stated error. Beyond the guard range nothing is promised: flag such inputs with
:func:`range_flags` (plaintext) or :func:`range_indicator` (encrypted, two levels).

* ``exp``: range reduction and repeated squaring, exp(x) = p(x)^(2^r) with p ~ exp(x / 2^r).
* ``reciprocal``: Goldschmidt iterations y <- y(1+e), e <- e^2 from a linear first guess, fitted so
  that 0 < x y0 < 2 on the guard range (the iterations then stay bounded there).
* ``inv_sqrt``: Newton iterations y <- 1.5 y - (x y / 2) y^2 from a polynomial first guess, fitted so
  that 0 < x y0^2 < 3 on the guard range (likewise bounded).
* ``gelu``, ``tanh``: least-squares polynomials on Chebyshev points (tanh odd).

Depth is consumed one level per multiplication. If a :class:`Refresher` is given, a function
refreshes its working ciphertext between phases when the levels left would not cover the next phase;
without one it raises :class:`~p3eft.fhe.context.LevelError` up front.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.polynomial import Chebyshev

from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, LevelError


class Refresher(Protocol):
    """Something that brings a ciphertext back to the top level (client-aided refresh)."""

    min_level: int

    def __call__(self, ct: Ciphertext) -> Ciphertext: ...


def poly_depth(degree: int) -> int:
    """Levels :func:`eval_poly` uses for a polynomial of this degree: ceil(log2 d) for powers, +1 for
    the coefficients."""
    return 0 if degree <= 0 else math.ceil(math.log2(degree)) + 1 if degree > 1 else 1


def _power_ladder(ctx: CkksContext, x: Ciphertext) -> Callable[[int], Ciphertext]:
    """``power(i)`` = x^i, built by squaring and one product per set bit, each power computed once."""
    powers: dict[int, Ciphertext] = {1: x}

    def power(i: int) -> Ciphertext:
        if i not in powers:
            hi = 1 << (i.bit_length() - 1)
            if hi == i:
                powers[i] = ops.square(ctx, power(i // 2))
            else:
                powers[i] = ops.multiply(ctx, power(hi), power(i - hi))
        return powers[i]

    return power


def _chebyshev_ladder(ctx: CkksContext, x: Ciphertext) -> Callable[[int], Ciphertext]:
    """``cheb(i)`` = T_i(x), the Chebyshev polynomials, each computed once, at the depth of x^i in
    :func:`_power_ladder`: T_2m = 2 T_m^2 - 1 and T_(m+n) = 2 T_m T_n - T_(m-n) with m the highest
    power of two below i (T_(m-n) is shallower, so its subtraction costs no level)."""
    ts: dict[int, Ciphertext] = {1: x}

    def cheb(i: int) -> Ciphertext:
        if i not in ts:
            m = 1 << (i.bit_length() - 1)
            if m == i:
                sq = ops.square(ctx, cheb(i // 2))
                ts[i] = ops.add_plain(ctx, ops.add(ctx, sq, sq), -1.0)
            else:
                p = ops.multiply(ctx, cheb(m), cheb(i - m))
                ts[i] = ops.sub(ctx, ops.add(ctx, p, p), cheb(2 * m - i))
        return ts[i]

    return cheb


def monomial_to_chebyshev(coeffs: np.ndarray) -> np.ndarray:
    """The same polynomial's coefficients in the Chebyshev basis, along axis 0 (any trailing shape)."""
    c = np.asarray(coeffs, dtype=np.float64)
    n = c.shape[0]
    basis = np.zeros((n, n))
    for j in range(n):
        basis[: j + 1, j] = np.polynomial.chebyshev.poly2cheb(np.eye(n)[j])[: j + 1]
    return np.tensordot(basis, c, axes=1)


def _sum_at_lowest_level(ctx: CkksContext, terms: list[Ciphertext]) -> Ciphertext:
    """Sum of ciphertexts on one scale, each brought down to the lowest level among them."""
    low = min(ctx.level(t) for t in terms)
    total = ops.drop_to(ctx, terms[0], low)
    for t in terms[1:]:
        total = ops.add(ctx, total, t)
    return total


def eval_poly(ctx: CkksContext, x: Ciphertext, coeffs: np.ndarray) -> Ciphertext:
    """sum_i coeffs[i] x^i (monomial basis) with powers built by squaring: depth :func:`poly_depth`."""
    coeffs = np.array(coeffs, dtype=np.float64)
    # coefficients that would encode to zero at this scale are fit noise (e.g. GELU's odd terms)
    coeffs[np.abs(coeffs) * ctx.params.scale < 1.0] = 0.0
    coeffs[1:][np.abs(coeffs[1:]) < 1e-12 * np.max(np.abs(coeffs[1:]), initial=0.0)] = 0.0
    degree = len(coeffs) - 1
    while degree > 0 and coeffs[degree] == 0:
        degree -= 1
    ops.need_levels(ctx, x, poly_depth(degree))
    power = _power_ladder(ctx, x)

    # every term lands on the nominal scale (the correction for each power's true scale is folded
    # into its coefficient's encoding), so the terms add without relabelling
    target = ctx.params.scale
    terms = [
        ops.mul_plain(ctx, power(i), float(coeffs[i]), scale=target)
        for i in range(1, degree + 1)
        if coeffs[i] != 0
    ]
    if not terms:
        raise ValueError("constant polynomial: nothing to evaluate under encryption")
    total = _sum_at_lowest_level(ctx, terms)
    if coeffs[0] != 0:
        total = ops.add_plain(ctx, total, float(coeffs[0]))
    return total


def eval_poly_per_slot(ctx: CkksContext, x: Ciphertext, coeffs: np.ndarray) -> Ciphertext:
    """sum_i coeffs[i, s] x_s^i with one coefficient per slot s: ``coeffs`` is (degree + 1, slots),
    monomial; meant for inputs scaled into [-1, 1].

    Why (ours): slots whose inputs live on different ranges (e.g. FFN channels with outlier inputs)
    each get the polynomial fitted to their own range, at the depth of one polynomial: the basis
    polynomials are shared and each coefficient vector rides on the plaintext product that the scalar
    :func:`eval_poly` pays anyway, so depth is :func:`poly_depth` of the highest degree. A slot's
    values never mix with another slot's, so the engine's slot isolation is unchanged.

    Evaluated in the Chebyshev basis (ours): a degree-16 GELU fitted on [-24, 24] and scaled to
    [-1, 1] has monomial coefficients up to ~8e3 (sum ~3e4) that cancel, and they multiplied each
    power's CKKS noise: minilm-l6's GELU came out ~1e-4 off the same polynomial in plaintext. Its
    Chebyshev coefficients are of the size of the function, and T_i stays in [-1, 1] on the range."""
    coeffs = np.array(coeffs, dtype=np.float64)
    if coeffs.ndim != 2 or coeffs.shape[1] != ctx.slots:
        raise ValueError(f"per-slot coefficients must be (degree + 1, {ctx.slots}), got {coeffs.shape}")
    coeffs = monomial_to_chebyshev(coeffs)
    # as in eval_poly: coefficients that would encode to zero at this scale are fit noise; a vector
    # spreads over the N polynomial coefficients, so a power whose largest coefficient is below
    # N / scale (~1.5e-8 at N = 16384) would encode to (almost) zero: it is dropped (SEAL refuses a
    # product by a zero plaintext)
    coeffs[np.abs(coeffs) * ctx.params.scale < 1.0] = 0.0
    coeffs[np.max(np.abs(coeffs), axis=1) * ctx.params.scale < 2 * ctx.slots] = 0.0
    used = np.any(coeffs != 0.0, axis=1)
    degree = int(np.max(np.nonzero(used)[0], initial=0))
    if degree == 0:
        raise ValueError("constant polynomial: nothing to evaluate under encryption")
    ops.need_levels(ctx, x, poly_depth(degree))
    cheb = _chebyshev_ladder(ctx, x)

    target = ctx.params.scale  # every term on the nominal scale (see eval_poly)
    terms = [ops.mul_plain(ctx, cheb(i), coeffs[i], scale=target) for i in range(1, degree + 1) if used[i]]
    total = _sum_at_lowest_level(ctx, terms)
    if used[0]:
        total = ops.add_plain(ctx, total, coeffs[0])
    return total


def ensure_levels(ctx: CkksContext, ct: Ciphertext, need: int, refresher: Refresher | None) -> Ciphertext:
    """``ct`` with ``need`` levels above the refresher's floor, refreshed if it has fewer.

    A refresher may spend a level of its answer (PrivTuner's backend resets a drifted scale after a
    refresh, one product); when the phase needs that level, one more refresh gives the top level (the
    reset scale is kept)."""
    floor = refresher.min_level if refresher is not None else 0
    if ctx.level(ct) - need >= floor:
        return ct
    if refresher is None:
        raise LevelError(
            f"needs {need} more level(s), ciphertext is at level {ctx.level(ct)}; pass a refresher"
        )
    if need > ctx.top_level - floor:  # no refresh can help: refuse before spending round trips
        raise LevelError(
            f"a phase needs {need} levels, more than a fresh ciphertext has above the refresh floor"
        )
    ct = refresher(ct)
    if ctx.level(ct) - need < floor:
        ct = refresher(ct)
    if ctx.level(ct) - need < floor:
        raise LevelError(
            f"the refresher's answer has {ctx.level(ct) - floor} levels above the floor, {need} needed"
        )
    return ct


@dataclass
class Approximation:
    """A function approximation with the same steps in plaintext and under encryption."""

    name: str
    lo: float
    hi: float
    degree: int
    depth: int
    exact: Callable[[np.ndarray], np.ndarray]
    plain: Callable[[np.ndarray], np.ndarray]
    _enc: Callable[[CkksContext, Ciphertext, Refresher | None], Ciphertext] = field(repr=False)
    note: str = ""
    guard: float = 4.0
    _trace: Callable[[np.ndarray], float] | None = field(default=None, repr=False)
    outside: str = ""
    _peak: float | None = field(default=None, repr=False)
    coeffs: np.ndarray | None = field(default=None, repr=False)  # monomial coefficients (polynomials)

    @property
    def guard_range(self) -> tuple[float, float]:
        """Where the construction is bounded by :attr:`peak`: 4x the range (see the module doc)."""
        return guard_range(self.lo, self.hi, self.guard)

    @property
    def peak(self) -> float:
        """Largest |intermediate value| of the construction on the guard range (plaintext, measured)."""
        if self._peak is None:
            glo, ghi = self.guard_range
            x = np.linspace(glo, ghi, 8001)
            x = x[x != 0] if self.lo > 0 else x
            self._peak = (
                float(self._trace(x)) if self._trace is not None else float(np.max(np.abs(self.plain(x))))
            )
        return self._peak

    def floor_level(self, ctx: CkksContext) -> int:
        """Lowest level the result may land on so that the guard-range peak cannot wrap there
        (0 for most; 1 when the peak exceeds what the bottom prime holds)."""
        for lvl in range(ctx.top_level + 1):
            if self.peak <= level_headroom(ctx, lvl):
                return lvl
        raise LevelError(
            f"{self.name}'s guard-range peak {self.peak:.1e} exceeds every level of {ctx.params.name}"
        )

    def levels_needed(self, ctx: CkksContext) -> int:
        """``depth`` plus :meth:`floor_level`: the result must not land below the level whose modulus
        holds the guard-range peak, so an out-of-range slot cannot wrap."""
        return self.depth + self.floor_level(ctx)

    def encrypted(self, ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None = None) -> Ciphertext:
        """Evaluate under encryption; without a refresher the ciphertext needs :meth:`levels_needed`."""
        ctx.check(ct)
        need, floor = self.levels_needed(ctx), self.floor_level(ctx)
        if refresher is None and ctx.level(ct) < need:
            extra = "" if floor == 0 else f" ({floor} to spare, so that out-of-range slots cannot wrap)"
            raise LevelError(
                f"{self.name} needs {need} levels{extra}, the ciphertext has {ctx.level(ct)}; pass a refresher"
            )
        if refresher is not None and refresher.min_level < floor:
            raise LevelError(
                f"{self.name} needs a refresher that keeps ciphertexts at level {floor} or above"
            )
        return self._enc(ctx, ct, refresher)

    def range_flags(self, x: np.ndarray) -> np.ndarray:
        """Per value: 0 in range, 1 outside it but in the guard range (bounded, other slots safe),
        2 beyond the guard range (may wrap and corrupt every slot of its ciphertext)."""
        return range_flags(x, self.lo, self.hi, self.guard)

    def max_error(self, points: int = 2001) -> float:
        """Largest |approximation - exact| on the stated range (plaintext; the approximation's own error)."""
        x = np.linspace(self.lo, self.hi, points)
        return float(np.max(np.abs(self.plain(x) - self.exact(x))))

    def max_rel_error(self, points: int = 2001) -> float:
        x = np.linspace(self.lo, self.hi, points)
        ex = self.exact(x)
        return float(np.max(np.abs(self.plain(x) - ex) / np.maximum(np.abs(ex), 1e-12)))

    def describe(self) -> dict[str, float | int | str]:
        return {
            "name": self.name,
            "range": [self.lo, self.hi],
            "degree": self.degree,
            "depth": self.depth,
            "max_abs_error_on_range": self.max_error(),
            "note": self.note,
        }


def guard_range(lo: float, hi: float, guard: float) -> tuple[float, float]:
    """[guard lo, guard hi] for a range around zero; (0, guard hi] for a positive range."""
    return (guard * lo if lo < 0 else 0.0), (guard * hi if hi > 0 else 0.0)


def range_flags(x: np.ndarray, lo: float, hi: float, guard: float = 4.0) -> np.ndarray:
    """0 where lo <= x <= hi, 1 where x is in the guard range only, 2 beyond it (or not finite).

    For the data owner, on values it decrypted (or on its own inputs before encrypting): the cheap way
    to flag a slot instead of trusting a corrupted one (ours)."""
    x = np.asarray(x, dtype=np.float64)
    glo, ghi = guard_range(lo, hi, guard)
    inside = (x >= lo) & (x <= hi)
    guarded = (x >= glo) & (x <= ghi) & (x > 0 if lo > 0 else True)
    return np.where(inside, 0, np.where(guarded & np.isfinite(x), 1, 2)).astype(np.int8)


def range_indicator(ctx: CkksContext, ct: Ciphertext, lo: float, hi: float) -> Ciphertext:
    """Encrypted ((2x - lo - hi) / (hi - lo))^2: at most 1 exactly where lo <= x <= hi, up to
    ~(2 guard + 1)^2 in the guard range. Two levels; the key holder decrypts it beside the result and
    flags the slots above 1 (ours)."""
    centred = ops.add_plain(ctx, ct, -(lo + hi) / 2)
    return ops.square(ctx, ops.mul_plain(ctx, centred, 2.0 / (hi - lo)))


def level_headroom(ctx: CkksContext, level: int) -> float:
    """Largest |value| a result at ``level`` (and the product at level + 1 that made it) holds without
    wrapping, with one bit of margin: 2^(bits(q_0...q_level) - scale_bits - 2)."""
    return 2.0 ** (ctx.params.level_bits(level) - ctx.params.scale_bits - 2)


def level0_headroom(ctx: CkksContext) -> float:
    """:func:`level_headroom` at level 0: 2^18 for our chains (60-bit q_0, 40-bit scale)."""
    return level_headroom(ctx, 0)


def _poly_peak(coeffs: np.ndarray, x: np.ndarray) -> float:
    """Largest |power|, |term| or |partial sum| that :func:`eval_poly` forms on ``x``."""
    peak, total = 0.0, np.full_like(x, coeffs[0] if len(coeffs) else 0.0)
    for i in range(1, len(coeffs)):
        power = x**i
        peak = max(peak, float(np.max(np.abs(power))))
        if coeffs[i] != 0:
            total = total + coeffs[i] * power
            peak = max(peak, float(np.max(np.abs(coeffs[i] * power))), float(np.max(np.abs(total))))
    return peak


def _guarded_guess(
    power: float,
    upper: float,
    lo: float,
    hi: float,
    degree: int,
    guard: float,
) -> tuple[np.ndarray, float]:
    """First guess y0 = sum c_i x^i minimising max |x^power y0 - 1| on [lo, hi] subject to
    0 <= x^power y0 <= upper on the guard range (0, guard hi]: a linear programme (ours).
    Returns the coefficients and the worst relative error on [lo, hi]."""
    from scipy.optimize import linprog

    core = np.linspace(lo, hi, 400)
    ext = np.linspace(hi / 200, guard * hi, 800)
    basis = lambda x: np.stack([x**power * x**i for i in range(degree + 1)], axis=1)  # noqa: E731
    bc, be = basis(core), basis(ext)
    n = degree + 1
    ones_c = np.ones((len(core), 1))
    a_ub = np.vstack(
        [
            np.hstack([bc, -ones_c]),  # x^p y0 - 1 <= t
            np.hstack([-bc, -ones_c]),  # 1 - x^p y0 <= t
            np.hstack([be, np.zeros((len(ext), 1))]),  # x^p y0 <= upper
            np.hstack([-be, np.zeros((len(ext), 1))]),  # x^p y0 >= 0
        ]
    )
    b_ub = np.concatenate(
        [np.ones(len(core)), -np.ones(len(core)), np.full(len(ext), upper), np.zeros(len(ext))]
    )
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * n + [(0, None)])
    if not res.success:
        raise ValueError(f"no degree-{degree} first guess is bounded on the guard range: {res.message}")
    return res.x[:n], float(res.x[n])


def _fit(
    f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, degree: int, odd: bool = False
) -> np.ndarray:
    """Least-squares fit on Chebyshev points, returned as monomial coefficients in x."""
    k = np.arange(4 * (degree + 1))
    t = np.cos(np.pi * (k + 0.5) / len(k))
    x = lo + (hi - lo) * (t + 1) / 2
    if odd:
        basis = np.stack([x**i for i in range(1, degree + 1, 2)], axis=1)
        sol, *_ = np.linalg.lstsq(basis, f(x), rcond=None)
        coeffs = np.zeros(degree + 1)
        coeffs[1::2] = sol
        return coeffs
    return Chebyshev.fit(x, f(x), degree).convert(kind=np.polynomial.Polynomial).coef


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def polynomial(
    name: str, f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, degree: int, odd: bool = False
) -> Approximation:
    coeffs = _fit(f, lo, hi, degree, odd)

    def enc(ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        return eval_poly(ctx, ensure_levels(ctx, ct, poly_depth(degree), refresher), coeffs)

    return Approximation(
        name,
        lo,
        hi,
        degree,
        poly_depth(degree),
        f,
        lambda x: np.polynomial.polynomial.polyval(x, coeffs),
        enc,
        note="least-squares polynomial on Chebyshev points",
        _trace=lambda x: _poly_peak(coeffs, x),
        outside="the polynomial itself: it leaves the function at once and grows like x^degree",
        coeffs=coeffs,
    )


def gelu(lo: float = -4.0, hi: float = 4.0, degree: int = 8) -> Approximation:
    """GELU (erf form) on [lo, hi]; default degree 8, depth 4."""
    return polynomial("gelu", _gelu_exact, lo, hi, degree)


def tanh(bound: float = 3.0, degree: int = 7) -> Approximation:
    """tanh on [-bound, bound] by an odd polynomial; default degree 7, depth 4."""
    return polynomial("tanh", np.tanh, -bound, bound, degree, odd=True)


def exp(lo: float = -4.0, hi: float = 4.0, squarings: int = 3, degree: int = 4) -> Approximation:
    """exp on [lo, hi]: p(x) ~ exp(x / 2^r) (degree ``degree``), then r squarings.
    Default depth 3 + 3 = 6; relative error grows ~2^r times the polynomial's."""
    r = squarings
    coeffs = _fit(lambda x: np.exp(x / 2**r), lo, hi, degree)
    pdepth = poly_depth(degree)

    def plain(x: np.ndarray) -> np.ndarray:
        y = np.polynomial.polynomial.polyval(x, coeffs)
        for _ in range(r):
            y = y * y
        return y

    def enc(ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        y = eval_poly(ctx, ensure_levels(ctx, ct, pdepth, refresher), coeffs)
        for _ in range(r):
            y = ops.square(ctx, ensure_levels(ctx, y, 1, refresher))
        return y

    def trace(x: np.ndarray) -> float:
        return max(_poly_peak(coeffs, x), float(np.max(np.abs(plain(x)))))

    return Approximation(
        "exp",
        lo,
        hi,
        degree,
        pdepth + r,
        np.exp,
        plain,
        enc,
        note=f"{r} squarings",
        _trace=trace,
        outside="p(x/2^r)^(2^r): close to exp just outside, then below exp (p is a polynomial)",
    )


def _goldschmidt_iters(delta: float, target: float) -> int:
    n, e = 0, delta
    while e > target and n < 12:
        e, n = e * e, n + 1
    return n


def reciprocal(
    lo: float = 1.0,
    hi: float = 8.0,
    target_rel: float = 1e-4,
    iters: int | None = None,
    guard: float = 4.0,
) -> Approximation:
    """1/x on [lo, hi] (lo > 0): a linear first guess y0, then Goldschmidt e0 = 1 - x y0,
    y <- y (1 + e), e <- e^2. Depth 2 + iters.

    y0 minimises the relative error on [lo, hi] subject to 0 < x y0 < 2 on (0, guard hi] (a linear
    programme, ours): then |e| < 1 on the whole guard range and every iterate stays bounded, at the
    price of a first guess calibrated on a wider range (6 iterations instead of 4 by default)."""
    if lo <= 0:
        raise ValueError("reciprocal needs a positive range")
    (a0, a1), delta = _guarded_guess(1.0, 1.98, lo, hi, 1, guard)
    n = iters if iters is not None else _goldschmidt_iters(delta, target_rel)

    def run(x: np.ndarray) -> tuple[np.ndarray, float]:
        y = a0 + a1 * x
        e = 1 - x * y
        peak = float(max(np.max(np.abs(y)), np.max(np.abs(e)), np.max(np.abs(x * y))))
        for _ in range(n):
            y, e = y * (1 + e), e * e
            peak = max(peak, float(np.max(np.abs(y))))
        return y, peak

    def enc(ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        x = ensure_levels(ctx, ct, 2, refresher)
        y = ops.add_plain(ctx, ops.mul_plain(ctx, x, a1), a0)
        e = ops.add_plain(ctx, ops.negate(ctx, ops.multiply(ctx, x, y)), 1.0)
        for _ in range(n):
            if refresher is not None and min(ctx.level(y), ctx.level(e)) - 1 < refresher.min_level:
                y, e = refresher(y), refresher(e)
            y, e = ops.multiply(ctx, y, ops.add_plain(ctx, e, 1.0)), ops.square(ctx, e)
        return y

    return Approximation(
        "reciprocal",
        lo,
        hi,
        1,
        2 + n,
        lambda x: 1.0 / x,
        lambda x: run(x)[0],
        enc,
        note=f"{n} Goldschmidt iterations",
        guard=guard,
        _trace=lambda x: run(x)[1],
        outside="between 0 and the guard: the iterates converge more slowly, to a bounded value "
        "(near 1/x just outside the range)",
    )


def inv_sqrt(
    lo: float = 1.0,
    hi: float = 4.0,
    guess_degree: int = 2,
    target_rel: float = 1e-4,
    iters: int | None = None,
    guard: float = 4.0,
) -> Approximation:
    """1/sqrt(x) on [lo, hi] (lo > 0): polynomial first guess, then Newton y <- 1.5 y - (x y / 2) y^2.
    Depth poly_depth(guess_degree) + 2 * iters.

    The guess minimises the relative error on [lo, hi] subject to 0 < x y0^2 < 3 on (0, guard hi]
    (a linear programme, ours): Newton's map then keeps x y^2 in (0, 1] after one step, so every
    iterate stays bounded on the guard range."""
    if lo <= 0:
        raise ValueError("inv_sqrt needs a positive range")
    coeffs, _ = _guarded_guess(0.5, 1.7, lo, hi, guess_degree, guard)

    def newton(x: np.ndarray, k: int) -> np.ndarray:
        y = np.polynomial.polynomial.polyval(x, coeffs)
        for _ in range(k):
            y = 1.5 * y - (0.5 * x * y) * (y * y)
        return y

    grid = np.linspace(lo, hi, 2001)
    n = iters
    if n is None:
        n = 0
        while n < 8 and np.max(np.abs(newton(grid, n) * np.sqrt(grid) - 1)) > target_rel:
            n += 1
    gdepth = poly_depth(guess_degree)

    def enc(ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        # Newton step in two levels (ours): y' = 1.5 y - (x y / 2) * y^2, with x/2 computed once,
        # y^2 and (x/2) y side by side, then their product; 1.5 y is brought onto its scale for free
        x = ensure_levels(ctx, ct, max(gdepth, 1), refresher)
        hx = ops.mul_plain(ctx, x, 0.5)
        y = eval_poly(ctx, x, coeffs)
        for _ in range(n):
            if refresher is not None and ctx.level(y) - 2 < refresher.min_level:
                y = refresher(y)
            if refresher is not None and ctx.level(hx) - 2 < refresher.min_level:
                hx = refresher(hx)
            v = ops.multiply(ctx, ops.square(ctx, y), ops.multiply(ctx, hx, y))
            y = ops.sub(ctx, ops.mul_plain(ctx, y, 1.5, scale=v.seal.scale), v)
        return y

    def trace(x: np.ndarray) -> float:
        y = np.polynomial.polynomial.polyval(x, coeffs)
        peak = _poly_peak(coeffs, x)
        for _ in range(n):
            hxy, yy = 0.5 * x * y, y * y
            y = 1.5 * y - hxy * yy
            peak = max(peak, float(np.max(np.abs(hxy))), float(np.max(yy)), float(np.max(np.abs(y))))
        return peak

    return Approximation(
        "inv_sqrt",
        lo,
        hi,
        guess_degree,
        gdepth + 2 * n,
        lambda x: 1 / np.sqrt(x),
        lambda x: newton(x, n),
        enc,
        note=f"{n} Newton iterations",
        guard=guard,
        _trace=trace,
        outside="between 0 and the guard: Newton from a guess with 0 < x y0^2 < 3, bounded, converging "
        "more slowly the further out",
    )


def default_catalogue() -> dict[str, Approximation]:
    """The functions with our default ranges (documented in docs/fhe.md)."""
    return {"exp": exp(), "reciprocal": reciprocal(), "inv_sqrt": inv_sqrt(), "gelu": gelu(), "tanh": tanh()}
