"""Vectorised monotone root finding in log space (Illinois false position with bisection safeguard).

The continuous stage solves many one-dimensional monotone equations at once (one deadline multiplier
per user, one price per shared resource); doing them as array operations is what makes 1000 users fast.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def root_decreasing(
    fun: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    ftol: np.ndarray | float,
    rtol: float = 1e-12,
    maxiter: int = 200,
    max_expand: int = 20,
    x_max: np.ndarray | float = np.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve ``fun(x) = 0`` elementwise for x > 0, where ``fun`` is non-increasing in each x.

    Returns ``(x_hi, f_hi, ok)``: ``x_hi`` is on the feasible side (``fun(x_hi) <= 0``), within
    ``ftol`` of zero or a relative bracket ``rtol``; ``ok`` is False where no sign change was found
    even after max_expand growing expansion steps, or below ``x_max`` (the equation has no root there).
    """
    x0 = np.asarray(x0, dtype=float)
    ftol = np.broadcast_to(np.asarray(ftol, dtype=float), x0.shape)
    lo, hi = x0.copy(), x0.copy()
    flo = fun(lo)
    fhi = flo.copy()
    ok = np.ones(x0.shape, dtype=bool)
    step = 1.25  # grows geometrically: cheap for warm starts, still reaches far brackets
    x_max = np.broadcast_to(np.asarray(x_max, dtype=float), x0.shape)
    for _ in range(max_expand):
        need_lo = flo < 0
        need_hi = (fhi > 0) & (hi < x_max)
        if not (need_lo.any() or need_hi.any()):
            break
        if need_lo.any():
            lo = np.where(need_lo, lo / step, lo)
            flo = np.where(need_lo, fun(lo), flo)
        if need_hi.any():
            hi = np.where(need_hi, np.minimum(hi * step, x_max), hi)
            fhi = np.where(need_hi, fun(hi), fhi)
        step = min(step * step, 1e6)
    ok = (flo >= 0) & (fhi <= 0)
    a, b = np.log(lo), np.log(hi)
    fa, fb = flo.copy(), fhi.copy()
    ga, gb = fa.copy(), fb.copy()  # Illinois-weighted copies
    side = np.zeros(x0.shape, dtype=int)
    for it in range(maxiter):
        done = (fb >= -ftol) | (b - a <= rtol) | ~ok
        if done.all():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            c = (a * gb - b * ga) / (gb - ga)
        bad = ~np.isfinite(c) | (c <= a) | (c >= b) | (it % 4 == 3)
        c = np.where(bad, 0.5 * (a + b), c)
        c = np.where(done, b, c)
        fc = fun(np.exp(c))
        left = (fc > 0) & ~done  # root lies right of c: move a
        right = (fc <= 0) & ~done
        a = np.where(left, c, a)
        fa = np.where(left, fc, fa)
        b = np.where(right, c, b)
        fb = np.where(right, fc, fb)
        ga = np.where(left, fc, np.where(right & (side == -1), ga * 0.5, ga))
        gb = np.where(right, fc, np.where(left & (side == 1), gb * 0.5, gb))
        side = np.where(left, 1, np.where(right, -1, side))
    return np.exp(b), fb, ok
