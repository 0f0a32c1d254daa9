"""Non-linear functions under encryption (model owner's side), each with a stated range, degree, depth.

Every function is an :class:`Approximation`: the same arithmetic runs on NumPy (:meth:`plain`) and on
ciphertexts (:meth:`encrypted`), so tests can check the encrypted result against the plaintext
approximation (CKKS error only) and the plaintext approximation against the exact function on its
range (approximation error only). Choices of range, degree and iteration count are ours (DESIGN.md
§2.1); outside the stated range the approximations are not meant to hold.

* ``exp``: range reduction and repeated squaring, exp(x) = p(x)^(2^r) with p ~ exp(x / 2^r).
* ``reciprocal``: Goldschmidt iterations y <- y(1+e), e <- e^2 from a linear first guess.
* ``inv_sqrt``: Newton iterations y <- y(3 - x y^2)/2 from a polynomial first guess.
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
    powers: dict[int, Ciphertext] = {1: x}

    def power(i: int) -> Ciphertext:
        if i not in powers:
            hi = 1 << (i.bit_length() - 1)
            if hi == i:
                powers[i] = ops.square(ctx, power(i // 2))
            else:
                powers[i] = ops.multiply(ctx, power(hi), power(i - hi))
        return powers[i]

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
    low = min(ctx.level(t) for t in terms)
    total = ops.drop_to(ctx, terms[0], low)
    for t in terms[1:]:
        total = ops.add(ctx, total, t)
    if coeffs[0] != 0:
        total = ops.add_plain(ctx, total, float(coeffs[0]))
    return total


def _ensure(ctx: CkksContext, ct: Ciphertext, need: int, refresher: Refresher | None) -> Ciphertext:
    floor = refresher.min_level if refresher is not None else 0
    if ctx.level(ct) - need >= floor:
        return ct
    if refresher is None:
        raise LevelError(
            f"needs {need} more level(s), ciphertext is at level {ctx.level(ct)}; pass a refresher"
        )
    ct = refresher(ct)
    if ctx.level(ct) - need < floor:
        raise LevelError(
            f"a phase needs {need} levels, more than a fresh ciphertext has above the refresh floor"
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

    def encrypted(self, ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None = None) -> Ciphertext:
        """Evaluate under encryption; without a refresher the ciphertext needs ``depth`` levels."""
        ctx.check(ct)
        if refresher is None and ctx.level(ct) < self.depth:
            raise LevelError(
                f"{self.name} needs {self.depth} levels, the ciphertext has {ctx.level(ct)}; pass a refresher"
            )
        return self._enc(ctx, ct, refresher)

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
        return eval_poly(ctx, _ensure(ctx, ct, poly_depth(degree), refresher), coeffs)

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
        y = eval_poly(ctx, _ensure(ctx, ct, pdepth, refresher), coeffs)
        for _ in range(r):
            y = ops.square(ctx, _ensure(ctx, y, 1, refresher))
        return y

    return Approximation("exp", lo, hi, degree, pdepth + r, np.exp, plain, enc, note=f"{r} squarings")


def _goldschmidt_iters(delta: float, target: float) -> int:
    n, e = 0, delta
    while e > target and n < 12:
        e, n = e * e, n + 1
    return n


def reciprocal(
    lo: float = 1.0, hi: float = 8.0, target_rel: float = 1e-4, iters: int | None = None
) -> Approximation:
    """1/x on [lo, hi] (lo > 0): linear first guess y0 (minimax for the relative error), then
    Goldschmidt e0 = 1 - x y0, y <- y (1 + e), e <- e^2. Depth 2 + iters."""
    if lo <= 0:
        raise ValueError("reciprocal needs a positive range")
    m = lo / hi
    beta = 8.0 / ((1 + m) ** 2 + 4 * m)  # y0(z) = beta((1+m) - z) on z = x/hi in [m, 1]
    delta = 1 - beta * m
    n = iters if iters is not None else _goldschmidt_iters(delta, target_rel)
    a0, a1 = beta * (1 + m) / hi, -beta / hi**2  # y0 = a0 + a1 x

    def plain(x: np.ndarray) -> np.ndarray:
        y = a0 + a1 * x
        e = 1 - x * y
        for _ in range(n):
            y, e = y * (1 + e), e * e
        return y

    def enc(ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        x = _ensure(ctx, ct, 2, refresher)
        y = ops.add_plain(ctx, ops.mul_plain(ctx, x, a1), a0)
        e = ops.add_plain(ctx, ops.negate(ctx, ops.multiply(ctx, x, y)), 1.0)
        for _ in range(n):
            if refresher is not None and min(ctx.level(y), ctx.level(e)) - 1 < refresher.min_level:
                y, e = refresher(y), refresher(e)
            y, e = ops.multiply(ctx, y, ops.add_plain(ctx, e, 1.0)), ops.square(ctx, e)
        return y

    return Approximation(
        "reciprocal", lo, hi, 1, 2 + n, lambda x: 1.0 / x, plain, enc, note=f"{n} Goldschmidt iterations"
    )


def inv_sqrt(
    lo: float = 1.0,
    hi: float = 4.0,
    guess_degree: int = 2,
    target_rel: float = 1e-4,
    iters: int | None = None,
) -> Approximation:
    """1/sqrt(x) on [lo, hi] (lo > 0): polynomial first guess, then Newton y <- 1.5 y - (x y / 2) y^2.
    Depth poly_depth(guess_degree) + 2 * iters (6 by default)."""
    if lo <= 0:
        raise ValueError("inv_sqrt needs a positive range")
    coeffs = _fit(lambda x: 1 / np.sqrt(x), lo, hi, guess_degree)

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
        x = _ensure(ctx, ct, max(gdepth, 1), refresher)
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
    )


def default_catalogue() -> dict[str, Approximation]:
    """The functions with our default ranges (documented in docs/fhe.md)."""
    return {"exp": exp(), "reciprocal": reciprocal(), "inv_sqrt": inv_sqrt(), "gelu": gelu(), "tanh": tanh()}
