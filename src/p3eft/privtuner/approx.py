"""The non-linear functions of the encrypted encoder, one per *site*, with calibrated ranges (ours).

A site is one place in the network where a non-linear function is applied: ``emb.inv_sqrt``,
``L0.exp``, ``L0.recip``, ``L0.ln1.inv_sqrt``, ``L0.gelu``, ``L0.gelu_grad``, ``L0.ln2.inv_sqrt``,
``pool.tanh``. Each site gets its own engine :class:`~p3eft.fhe.nonlinear.Approximation` fitted to
the range calibrated on training data (:mod:`p3eft.privtuner.calibration`), so a narrow site is not
paid for with the degree a wide one needs. The plaintext twin calls :attr:`Fn.plain` (the same
arithmetic, in NumPy), the encrypted path :meth:`Fn.encrypted`; ``exact`` functions have no
encrypted form and define the plain model.

GELU and GELU' (ours): one polynomial per *range class* of slots (:class:`SlotFn`). A few FFN
channels of real encoders carry outlier inputs (MiniLM: |x| up to ~24 in the [CLS] row, while 99% of
the channels stay within ~6), and one range for the whole site made the degree-16 fit off by up to
0.5 everywhere. Each (position group, channel) slot is put into the class of its calibrated range
(:func:`p3eft.privtuner.calibration.slot_classes`); each class gets its own scale and polynomial, and
the encrypted path evaluates them all at once with per-slot coefficient vectors (shared powers: the
depth of one polynomial, :func:`p3eft.fhe.nonlinear.eval_poly_per_slot`).

Degree/iteration choices (ours): polynomials take the lowest even degree (4..16) whose error on the
range is below ``tol``; exp uses enough squarings that the reduced argument spans at most 2, with a
degree-6 polynomial; reciprocal and inverse square root iterate until the relative error is below
``1e-4`` on the range (the inverse square root from a degree-3 guess, or a linear one on ranges wider
than 16: see :func:`_inv_sqrt`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import erf

from p3eft.fhe import nonlinear
from p3eft.fhe.context import Ciphertext, CkksContext, LevelError
from p3eft.fhe.nonlinear import Approximation, Refresher
from p3eft.privtuner.standardize import HeadStandardizer


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
    arg_scale: float | np.ndarray = 1.0  # an array only for exact functions of per-slot sites
    arg_offset: float | np.ndarray = 0.0  # x' = sigma x - offset (GELU classes: centred on [-1, 1])

    @property
    def exact(self) -> bool:
        return self.approximation is None

    def plain(self, x: np.ndarray) -> np.ndarray:
        if self.approximation is None:
            return EXACT[kind_of(self.site)]((x + self.arg_offset) / self.arg_scale)
        return self.approximation.plain(x)

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


# per-slot coefficients below this are dropped (ours): each adds < 1e-7 on [-1, 1], and the encrypted
# path cannot encode them (eval_poly_per_slot drops powers below N / scale, ~6e-8 at N = 32768), so
# the twin drops them too and both paths evaluate the same polynomial
COEFF_FLOOR = 1e-7


@dataclass
class SlotPart:
    """A :class:`SlotFn` on one FFN chunk: class per slot ``cls`` (seq, width) and the per-slot
    monomial coefficients ``coeffs`` (degree + 1, seq, width) that both paths evaluate."""

    site: str
    classes: list[Fn]
    cls: np.ndarray
    coeffs: np.ndarray
    exact: bool = False

    @property
    def first_phase_depth(self) -> int:
        return nonlinear.poly_depth(self.coeffs.shape[0] - 1)

    def plain(self, x: np.ndarray) -> np.ndarray:
        """sum_k coeffs[k] x^k slot by slot (Horner; the encrypted path builds the same powers)."""
        y = np.array(self.coeffs[-1], dtype=np.float64)
        for k in range(self.coeffs.shape[0] - 2, -1, -1):
            y = y * x + self.coeffs[k]
        return y

    def out_of_range(self, x: np.ndarray) -> list[tuple[int, tuple[float, float], tuple[float, float]]]:
        """(class, observed (min, max), allowed range) of every class with an input outside its range."""
        out = []
        for k in np.unique(self.cls):
            v = x[self.cls == k]
            lo, hi = float(np.min(v)), float(np.max(v))
            c = self.classes[int(k)]
            if lo < c.lo or hi > c.hi:
                out.append((int(k), (lo, hi), (c.lo, c.hi)))
        return out

    def floor_level(self, ctx: CkksContext) -> int:
        """The highest guard floor of the classes: every slot's guard-range peak must fit there."""
        return max(c.approximation.floor_level(ctx) for c in self.classes if c.approximation is not None)

    def encrypted(
        self, ctx: CkksContext, ct: Ciphertext, coeff_slots: np.ndarray, refresher: Refresher | None
    ) -> Ciphertext:
        """``coeff_slots``: :attr:`coeffs` packed like ``ct`` (degree + 1, slots)."""
        depth, floor = self.first_phase_depth, self.floor_level(ctx)
        if refresher is None:
            if ctx.level(ct) < depth + floor:
                raise LevelError(
                    f"{self.site} needs {depth + floor} levels, the ciphertext has {ctx.level(ct)}"
                )
        else:
            if refresher.min_level < floor:
                raise LevelError(f"{self.site} needs a refresher that keeps ciphertexts at level {floor}+")
            ct = nonlinear.ensure_levels(ctx, ct, depth, refresher)
        return nonlinear.eval_poly_per_slot(ctx, ct, coeff_slots)


@dataclass
class SlotFn:
    """GELU or GELU' with one approximation per range class of slots (ours; see the module doc).

    ``slot_class`` (chunks, seq, width) gives each slot's class: chunk c holds FFN channels
    c * width .. (c + 1) * width - 1 (padding channels beyond the FFN size included), row r the
    token position. Class k's input arrives as x' = sigma_k x - tau_k (``classes[k].arg_scale`` and
    ``arg_offset``, folded per slot into the up-projection's kernel and bias: :meth:`scales`,
    :meth:`offsets`), which maps the class range onto [-1, 1], and ``classes[k]`` is fitted to
    f((x' + tau_k) / sigma_k) there. Why centred (ours): a polynomial on [-1, 1] has the best
    conditioned monomial coefficients; on an off-centre range such as [-1, 0.25] its coefficients
    and its guard-range peak grow by orders of magnitude (MiniLM: a peak above what level 1 holds). A slot outside its class's range is flagged by the twin
    (:meth:`SlotPart.out_of_range`), never clipped."""

    site: str
    classes: list[Fn]
    slot_class: np.ndarray
    _parts: dict[int, SlotPart] = field(default_factory=dict, repr=False)

    exact = False

    @property
    def degree(self) -> int:
        return max(c.approximation.degree for c in self.classes if c.approximation is not None)

    @property
    def depth(self) -> int:
        return nonlinear.poly_depth(self.degree)

    def scales(self) -> np.ndarray:
        """sigma per slot (chunks, seq, width)."""
        return np.array([c.arg_scale for c in self.classes])[self.slot_class]

    def offsets(self) -> np.ndarray:
        """tau per slot (chunks, seq, width)."""
        return np.array([c.arg_offset for c in self.classes])[self.slot_class]

    def part(self, chunk: int) -> SlotPart:
        if chunk not in self._parts:
            cls = self.slot_class[chunk]
            coeffs = np.zeros((self.degree + 1, *cls.shape))
            for k, c in enumerate(self.classes):
                a = c.approximation
                assert a is not None and a.coeffs is not None
                coeffs[: len(a.coeffs), cls == k] = np.asarray(a.coeffs)[:, None]
            coeffs[np.abs(coeffs) < COEFF_FLOOR] = 0.0  # the same coefficients on both paths
            self._parts[chunk] = SlotPart(self.site, self.classes, cls, coeffs)
        return self._parts[chunk]

    def with_class(self, k: int, fn: Fn) -> SlotFn:
        """A copy with class ``k`` refitted (calibration widens a class that an input left)."""
        classes = list(self.classes)
        classes[k] = fn
        return SlotFn(self.site, classes, self.slot_class)

    def describe(self) -> dict[str, Any]:
        counts = np.bincount(self.slot_class.ravel(), minlength=len(self.classes))
        out = []
        for k, c in enumerate(self.classes):
            d = c.describe()
            d["input_range"] = [(c.lo + c.arg_offset) / c.arg_scale, (c.hi + c.arg_offset) / c.arg_scale]
            d["slots"] = int(counts[k])
            out.append(d)
        return {
            "site": self.site,
            "degree": self.degree,
            "depth": self.depth,
            "classes": out,
            "max_abs_error_on_range": max(d["max_abs_error_on_range"] for d in out),
        }


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


def build(
    site: str, lo: float, hi: float, tol: float = 2e-3, arg_scale: float = 1.0, arg_offset: float = 0.0
) -> Fn:
    """The approximation of ``site``'s function on [lo, hi] (in the transformed input
    x' = sigma x - offset; the offset only for GELU and GELU')."""
    kind = kind_of(site)
    sig = arg_scale if kind in ARG_SCALED else 1.0
    off = arg_offset if kind in ("gelu", "gelu_grad") else 0.0
    if kind == "exp":
        r = max(0, math.ceil(math.log2(max((hi - lo) / 2.0, 1e-9))))
        a = nonlinear.exp(lo, hi, squarings=r, degree=6)
    elif kind == "recip":
        a = nonlinear.reciprocal(lo, hi, target_rel=1e-4)
    elif kind == "inv_sqrt":
        a = _inv_sqrt(lo, hi)
    elif kind == "gelu":
        a = _lowest_degree_poly("gelu", lambda x: gelu_exact((x + off) / sig), lo, hi, tol, odd=False)
    elif kind == "gelu_grad":
        a = _lowest_degree_poly(
            "gelu_grad", lambda x: gelu_grad_exact((x + off) / sig), lo, hi, tol, odd=False
        )
    elif kind == "tanh":
        bound = max(abs(lo), abs(hi))
        a = _lowest_degree_poly("tanh", lambda x: np.tanh(x / sig), -bound, bound, tol, odd=True)
        lo, hi = -bound, bound
    else:
        raise ValueError(f"unknown function kind {kind!r}")
    return Fn(site, lo, hi, a, sig, off)


class FnSet(dict[str, "Fn | SlotFn"]):
    """site -> Fn. An exact set answers any site with the exact function (infinite range)."""

    def __init__(
        self,
        fns: dict[str, Fn] | None = None,
        exact: bool = False,
        exp_shift: dict | None = None,
        scales: dict | None = None,
        rounds: dict | None = None,
        offsets: dict | None = None,
    ):
        super().__init__(fns or {})
        self.exact = exact
        self.exp_shift: dict[str, float] = dict(exp_shift or {})
        # site -> input factor: a float; for LayerNorm variances one factor per row (position); for
        # GELU / GELU' one per slot (chunks, seq, width), the factor of the slot's range class
        self.scales: dict[str, float | np.ndarray] = dict(scales or {})
        self.rounds: dict[str, int] = dict(rounds or {})
        # per-slot sites: the offset tau subtracted after the scale (chunks, seq, width)
        self.offsets: dict[str, np.ndarray] = dict(offsets or {})
        # the refresh mask's bound for every value (the configured ceiling; None before calibration)
        self.refresh_bound: float | None = None
        # the classifier's input standardization (public constants; None: the plain head)
        self.head_std: HeadStandardizer | None = None

    def in_scale(self, site: str) -> float | np.ndarray:
        """The factor sigma that scales a site's input into its fitted range (LayerNorm variances:
        a tiny variance would put x^3 of the first guess under CKKS's absolute noise floor). For
        LayerNorm it is one factor per row (seq,): positions are public, and row 0 ([CLS]) has a
        variance of its own (see :mod:`p3eft.privtuner.calibration`)."""
        return self.scales.get(site, 1.0)

    def in_offset(self, site: str) -> float | np.ndarray:
        """The offset tau subtracted from a per-slot site's scaled input (0 for other sites)."""
        return self.offsets.get(site, 0.0)

    def copy(self) -> FnSet:
        """A full copy (``dict.copy`` would drop the shifts, scales, rounds, bounds and head), whose
        sites can be replaced without touching this set."""
        out = FnSet(
            dict(self),
            exact=self.exact,
            exp_shift=self.exp_shift,
            scales=self.scales,
            rounds=self.rounds,
            offsets=self.offsets,
        )
        out.refresh_bound, out.head_std = self.refresh_bound, self.head_std
        return out

    def exact_copy(self) -> FnSet:
        """The exact functions with this set's shifts, scales, softmax rounds and head standardization
        (same graph)."""
        out = FnSet(
            exact=True, exp_shift=self.exp_shift, scales=self.scales, rounds=self.rounds, offsets=self.offsets
        )
        out.head_std = self.head_std
        return out

    def softmax_rounds(self, layer: int) -> int:
        """Normalise-and-square rounds of layer ``layer``'s softmax (0: plain exp and normalise)."""
        return self.rounds.get(f"L{layer}", 0)

    def get_fn(self, site: str, part: int | None = None) -> Fn | SlotPart:
        """The function of ``site``; ``part`` is the FFN chunk of a per-slot site (GELU, GELU')."""
        if self.exact:
            sig: Any = self.scales.get(site, 1.0) if kind_of(site) in ARG_SCALED else 1.0
            off: Any = self.offsets.get(site, 0.0)
            if part is not None and np.ndim(sig) == 3:
                sig = sig[part]
            if part is not None and np.ndim(off) == 3:
                off = off[part]
            return Fn(site, -math.inf, math.inf, None, sig, off)
        try:
            fn = self[site]
        except KeyError:
            raise KeyError(f"no calibrated range for site {site}; run calibration first") from None
        if isinstance(fn, SlotFn):
            if part is None:
                raise ValueError(f"site {site} has per-slot classes: say which FFN chunk")
            return fn.part(part)
        return fn

    def shift(self, layer: int) -> float:
        """The constant subtracted from layer ``layer``'s scores before exp (softmax is shift-free)."""
        return self.exp_shift.get(f"L{layer}", 0.0)

    def flat(self) -> list[Fn]:
        """Every fitted function: the sites' own and each class of a per-slot site."""
        out: list[Fn] = []
        for fn in self.values():
            out.extend(fn.classes if isinstance(fn, SlotFn) else [fn])
        return out

    def deepest_phase(self) -> tuple[int, str]:
        """(levels, site): the most levels one site's approximation needs in one phase, after its
        input is refreshed, and that site; (0, "") when nothing is approximated."""
        best = (0, "")
        for site, fn in self.items():
            best = max(best, (fn.depth if isinstance(fn, SlotFn) else fn.first_phase_depth, site))
        return best

    def describe(self) -> list[dict[str, Any]]:
        return [fn.describe() for fn in self.values()]
