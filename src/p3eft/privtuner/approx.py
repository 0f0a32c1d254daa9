"""The non-linear functions of the encrypted encoder, one per *site*, with calibrated ranges (ours).

A site is one place in the network where a non-linear function is applied: ``emb.inv_sqrt``,
``L0.exp``, ``L0.recip``, ``L0.ln1.inv_sqrt``, ``L0.gelu``, ``L0.gelu_grad``, ``L0.ln2.inv_sqrt``,
``pool.tanh``. Each site gets its own engine :class:`~p3eft.fhe.nonlinear.Approximation` fitted to
the range calibrated on training data (:mod:`p3eft.privtuner.calibration`), so a narrow site is not
paid for with the degree a wide one needs. The plaintext twin calls :attr:`Fn.plain` (the same
arithmetic, in NumPy), the encrypted path :meth:`Fn.encrypted`; ``exact`` functions have no
encrypted form and define the plain model.

Degree/iteration choices (ours): polynomials take the lowest even degree (4..16) whose error on the
range is below ``tol``; exp uses enough squarings that the reduced argument spans at most 2, with a
degree-6 polynomial; reciprocal and inverse square root iterate until the relative error is below
``1e-4`` on the range (the inverse square root from a degree-3 guess, or a linear one on ranges wider
than 16: see :func:`_inv_sqrt`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from p3eft.fhe import nonlinear
from p3eft.fhe.context import Ciphertext, CkksContext
from p3eft.fhe.nonlinear import Approximation, Refresher


def gelu_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_grad_exact(x: np.ndarray) -> np.ndarray:
    """d/dx of the erf GELU: Phi(x) + x phi(x)."""
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


EXACT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "recip": lambda x: 1.0 / x,
    "inv_sqrt": lambda x: 1.0 / np.sqrt(x),
    "gelu": gelu_exact,
    "gelu_grad": gelu_grad_exact,
    "tanh": np.tanh,
}


def kind_of(site: str) -> str:
    """``L0.ln1.inv_sqrt`` -> ``inv_sqrt``; ``L0.recip2`` -> ``recip`` (one site per softmax round)."""
    tail = site.rsplit(".", 1)[-1]
    return tail.rstrip("0123456789") if tail.startswith("recip") else tail


ARG_SCALED = ("gelu", "gelu_grad", "tanh")  # input x' = sigma * x, function f(x' / sigma)


@dataclass
class Fn:
    """One site's function: exact, or an engine approximation on [lo, hi].

    For GELU, GELU' and tanh the input arrives scaled by ``arg_scale`` (sigma, folded into the
    preceding plaintext kernel), so the fitted polynomial is f(x' / sigma) on a range inside [-1, 1]:
    monomials of |x'| <= 1 keep CKKS's absolute noise from being amplified by large powers.
    """

    site: str
    lo: float
    hi: float
    approximation: Approximation | None = None
    arg_scale: float = 1.0

    @property
    def exact(self) -> bool:
        return self.approximation is None

    def plain(self, x: np.ndarray) -> np.ndarray:
        if self.approximation is None:
            return EXACT[kind_of(self.site)](x / self.arg_scale)
        return self.approximation.plain(x)

    @property
    def internal_bound(self) -> float:
        """A bound on every value the approximation refreshes internally (its input and its running
        result on the range), x2; the refresh mask inside the function uses it (ours)."""
        if self.approximation is None:
            return math.inf
        x = np.linspace(self.lo, self.hi, 513)
        return 2.0 * float(max(np.max(np.abs(x)), np.max(np.abs(self.approximation.plain(x))), 1.0))

    @property
    def first_phase_depth(self) -> int:
        """Levels the approximation's first phase needs (so the caller can refresh its input first)."""
        a = self.approximation
        if a is None:
            return 0
        kind = kind_of(self.site)
        if kind == "exp":
            return nonlinear.poly_depth(6)
        if kind == "recip":
            return 2
        if kind == "inv_sqrt":
            return nonlinear.poly_depth(a.degree)
        return a.depth

    def encrypted(self, ctx: CkksContext, ct: Ciphertext, refresher: Refresher | None) -> Ciphertext:
        if self.approximation is None:
            raise ValueError(f"site {self.site} is exact; it has no encrypted form")
        return self.approximation.encrypted(ctx, ct, refresher)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"site": self.site, "range": [self.lo, self.hi]}
        if self.approximation is not None:
            a = self.approximation
            d.update(
                {
                    "degree": a.degree,
                    "depth": a.depth,
                    "note": a.note,
                    "max_abs_error_on_range": a.max_error(),
                    "max_rel_error_on_range": a.max_rel_error(),
                }
            )
        return d


def _lowest_degree_poly(name: str, f: Callable, lo: float, hi: float, tol: float, odd: bool) -> Approximation:
    best = None
    for degree in range(3 if odd else 4, 17, 2):
        a = nonlinear.polynomial(name, f, lo, hi, degree, odd=odd)
        best = a
        if a.max_error() <= tol:
            return a
    assert best is not None
    return best


WIDE_INV_SQRT = 16.0  # range ratio above which the inverse square root starts from a linear guess


def _inv_sqrt(lo: float, hi: float, target_rel: float = 1e-4) -> Approximation:
    """Degree-3 first guess on ranges with hi / lo <= 16, a linear one on wider ranges; Newton steps
    until the relative error is below ``target_rel`` (at most 12).

    Why linear on wide ranges (ours): a higher-degree guess on [1, R] has large monomial terms that
    cancel (on [1, 5200], a 1300x spread after the calibration margin, sum |c_i x^i| reaches ~400x the
    result for degree 7, ~30x for degree 3, ~2x for degree 1), so the ciphertext products' relative error is amplified that much, enough to push a
    Newton step out of its basin; and the guard-range linear programme of a degree-7 guess cannot be
    solved beyond a ratio of ~50. A linear guess costs more Newton steps (two levels each; 1 + 2 x 10
    levels on [1, 1300], 1 + 2 x 12 on [1, 5200], against 3 + 2 x 3 on [1, 13]) but stays well conditioned. LayerNorm sites are
    kept narrow by the per-position variance scale (:mod:`p3eft.privtuner.calibration`), so this is
    the fallback, not the common case."""
    degree = 3 if hi / lo <= WIDE_INV_SQRT else 1
    a = nonlinear.inv_sqrt(lo, hi, guess_degree=degree, iters=0)
    for n in range(0, 13):
        a = nonlinear.inv_sqrt(lo, hi, guess_degree=degree, iters=n)
        if a.max_rel_error() <= target_rel:
            break
    return a


def build(site: str, lo: float, hi: float, tol: float = 2e-3, arg_scale: float = 1.0) -> Fn:
    """The approximation of ``site``'s function on [lo, hi] (in the scaled input x' = sigma x)."""
    kind = kind_of(site)
    sig = arg_scale if kind in ARG_SCALED else 1.0
    if kind == "exp":
        r = max(0, math.ceil(math.log2(max((hi - lo) / 2.0, 1e-9))))
        a = nonlinear.exp(lo, hi, squarings=r, degree=6)
    elif kind == "recip":
        a = nonlinear.reciprocal(lo, hi, target_rel=1e-4)
    elif kind == "inv_sqrt":
        a = _inv_sqrt(lo, hi)
    elif kind == "gelu":
        a = _lowest_degree_poly("gelu", lambda x: gelu_exact(x / sig), lo, hi, tol, odd=False)
    elif kind == "gelu_grad":
        a = _lowest_degree_poly("gelu_grad", lambda x: gelu_grad_exact(x / sig), lo, hi, tol, odd=False)
    elif kind == "tanh":
        bound = max(abs(lo), abs(hi))
        a = _lowest_degree_poly("tanh", lambda x: np.tanh(x / sig), -bound, bound, tol, odd=True)
        lo, hi = -bound, bound
    else:
        raise ValueError(f"unknown function kind {kind!r}")
    return Fn(site, lo, hi, a, sig)


class FnSet(dict[str, Fn]):
    """site -> Fn. An exact set answers any site with the exact function (infinite range)."""

    def __init__(
        self,
        fns: dict[str, Fn] | None = None,
        exact: bool = False,
        exp_shift: dict | None = None,
        scales: dict | None = None,
        rounds: dict | None = None,
    ):
        super().__init__(fns or {})
        self.exact = exact
        self.exp_shift: dict[str, float] = dict(exp_shift or {})
        # site -> input factor: a float, or for LayerNorm variances one factor per row (position)
        self.scales: dict[str, float | np.ndarray] = dict(scales or {})
        self.rounds: dict[str, int] = dict(rounds or {})
        self.value_bounds: dict[int, float] = {}  # op index -> refresh mask bound (calibrated)
        self.frozen_ops = 0  # operations of the frozen prefix (embeddings + frozen layers)

    def value_bound(self, op: int) -> float | None:
        return self.value_bounds.get(op)

    def in_scale(self, site: str) -> float | np.ndarray:
        """The factor sigma that scales a site's input into its fitted range (LayerNorm variances:
        a tiny variance would put x^3 of the first guess under CKKS's absolute noise floor). For
        LayerNorm it is one factor per row (seq,): positions are public, and row 0 ([CLS]) has a
        variance of its own (see :mod:`p3eft.privtuner.calibration`)."""
        return self.scales.get(site, 1.0)

    def exact_copy(self) -> FnSet:
        """The exact functions with this set's shifts, scales and softmax rounds (same graph)."""
        return FnSet(exact=True, exp_shift=self.exp_shift, scales=self.scales, rounds=self.rounds)

    def softmax_rounds(self, layer: int) -> int:
        """Normalise-and-square rounds of layer ``layer``'s softmax (0: plain exp and normalise)."""
        return self.rounds.get(f"L{layer}", 0)

    def get_fn(self, site: str) -> Fn:
        if self.exact:
            sig = self.scales.get(site, 1.0) if kind_of(site) in ARG_SCALED else 1.0
            return Fn(site, -math.inf, math.inf, None, sig)
        try:
            return self[site]
        except KeyError:
            raise KeyError(f"no calibrated range for site {site}; run calibration first") from None

    def shift(self, layer: int) -> float:
        """The constant subtracted from layer ``layer``'s scores before exp (softmax is shift-free)."""
        return self.exp_shift.get(f"L{layer}", 0.0)

    def describe(self) -> list[dict[str, Any]]:
        return [fn.describe() for fn in self.values()]
