"""Input ranges of every approximation, calibrated on training data; out-of-range inputs flagged (ours).

Procedure (:func:`calibrate`):

1. run the *exact* twin (forward and backward) on the calibration examples, recording the min and
   max of every site's input over every slot (padding rows and padded features included: the
   encrypted path evaluates them too);
2. every LayerNorm variance gets one public factor per position that puts the position's calibrated
   minimum at 1 (:func:`position_scales`): row 0 always holds [CLS], whose variance can differ by
   orders of magnitude from the other rows' (MiniLM: ~300x at layer 0's second LayerNorm), so it gets
   its own factor, and all other positions share one (a position beyond 0 may hold a word, [SEP] or
   padding, and the length is hidden from the model owner);
   attention scores are shifted by the largest calibrated score of their layer (softmax does not
   change), so exp only sees [lo - max, 0] and its outputs stay below 1 -- the values that go into
   the reciprocal and the refreshes stay small;
3. widen each range by ``margin`` (signed sites: margin x width on each side; positive sites --
   reciprocal, inverse square root -- by the factor 1 + 4 x margin at each end) and fit the site's
   approximation on it (:func:`p3eft.privtuner.approx.build`);
4. run the *approximate* twin on the same examples; a site whose inputs now leave its range (the
   approximations shift later values a little) is widened again and refitted (up to 3 rounds).

An input outside its range is never clipped: the twin reports it as a
:class:`~p3eft.privtuner.backend.RangeFlag` (:func:`check_ranges`), and the report says so.
The largest |value| of any intermediate must stay below the refresh bound; the report checks that too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.privtuner.approx import ARG_SCALED, FnSet, build, kind_of
from p3eft.privtuner.backend import RangeFlag
from p3eft.privtuner.twin import Example, PrivTunerModel, Twin

POSITIVE = ("recip", "inv_sqrt")
VALUE_BOUND_FACTOR = 16.0  # headroom over the calibrated |value| (other examples, training drift)
MIN_VALUE_BOUND = 1e-3


@dataclass
class CalibrationReport:
    fns: FnSet
    observed: dict[str, list[float]]
    max_abs_value: float
    refresh_bound: float
    rounds: int
    flags: list[RangeFlag] = field(default_factory=list)

    @property
    def bound_ok(self) -> bool:
        """Every calibrated intermediate |value| lies below the configured refresh ceiling (else the
        refresh of the largest values hides them with less than lambda bits: raise ``refresh_bound``)."""
        return self.max_abs_value < self.refresh_bound

    def describe(self) -> dict[str, Any]:
        return {
            "sites": self.fns.describe(),
            "exp_shift": dict(self.fns.exp_shift),
            "observed": self.observed,
            "max_abs_value": self.max_abs_value,
            "refresh_bound": self.refresh_bound,
            "bound_ok": self.bound_ok,
            "refresh_bound_needed": self.max_abs_value,
            "rounds": self.rounds,
            "flags": [f.__dict__ for f in self.flags],
        }


def _record(
    twin: Twin,
    examples: Sequence[Example],
    params: dict[str, np.ndarray],
    op_max: dict[int, float] | None = None,
    row_ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict, float, list]:
    ranges: dict[str, list[float]] = {}
    max_abs = 0.0
    flags: list[RangeFlag] = []
    for ex in examples:
        bk = twin.backend(record=True)
        logits, cache = twin.forward(ex, params, keep=True, bk=bk)
        assert cache is not None
        spec = twin.model.spec
        gm = []
        for _ in range(len(logits)):
            m = np.zeros((spec.seq, spec.width))
            m[0] = 1.0  # |dL/dlogit| <= 1 for cross-entropy: calibrate the backward at that bound
            gm.append(m)
        twin.model.graph.backward(bk, cache, gm, params)
        for site, (lo, hi) in bk.ranges.items():
            r = ranges.setdefault(site, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        max_abs = max(max_abs, bk.max_abs)
        flags.extend(bk.flags)
        if op_max is not None:
            for k, v in bk.op_max.items():
                op_max[k] = max(op_max.get(k, 0.0), v)
        if row_ranges is not None:
            for site, (rlo, rhi) in bk.row_ranges.items():
                if site in row_ranges:
                    plo, phi = row_ranges[site]
                    rlo, rhi = np.minimum(plo, rlo), np.maximum(phi, rhi)
                row_ranges[site] = (rlo, rhi)
    return ranges, max_abs, flags


# positions with a LayerNorm variance factor of their own; every other position shares one (ours)
OWN_SCALE_POSITIONS = (0,)


def position_scales(site: str, row_lo: np.ndarray, row_hi: np.ndarray, margin: float) -> np.ndarray:
    """One factor per row for a LayerNorm variance site: 1 / (widened minimum of the row's group), the
    groups being each position of :data:`OWN_SCALE_POSITIONS` and all the others together (ours).

    Why: with one factor per site, the site's range spans the spread across rows (MiniLM's [CLS]
    row: ~300x the others' variance at layer 0's second LayerNorm, over 1000x with the margin), and an
    inverse square root on such a range needs many more levels and is ill-conditioned under encryption.
    Per group, the range spans only the spread across examples (~3x on MiniLM). Positions are public,
    so the factors reveal nothing about the data."""
    seq = len(row_lo)
    groups = [[p] for p in OWN_SCALE_POSITIONS if p < seq]
    rest = [r for r in range(seq) if r not in OWN_SCALE_POSITIONS]
    if rest:
        groups.append(rest)
    sigma = np.empty(seq)
    for rows in groups:
        wlo, _ = _widen(site, float(np.min(row_lo[rows])), float(np.max(row_hi[rows])), margin)
        sigma[rows] = 1.0 / wlo
    return sigma


def _widen(site: str, lo: float, hi: float, margin: float) -> tuple[float, float]:
    if kind_of(site) in POSITIVE:
        if lo <= 0:
            raise P3eftError(f"site {site} saw a non-positive input {lo}; cannot calibrate")
        return lo / (1 + 4 * margin), hi * (1 + 4 * margin)
    w = max(hi - lo, 1e-3)
    return lo - margin * w, hi + margin * w


def calibrate(
    model: PrivTunerModel,
    examples: Sequence[Example],
    params: dict[str, np.ndarray],
    margin: float | None = None,
    reduced_width: float = 2.0,
) -> CalibrationReport:
    """Fit every site's approximation to its calibrated range (see module doc)."""
    if not examples:
        raise P3eftError("calibration needs at least one example")
    m = model.cfg.margin if margin is None else margin
    # pass 1: raw ranges with the exact functions and no transformation
    raw_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    raw, _, _ = _record(Twin(model, exact=True), examples, params, row_ranges=raw_rows)
    shifts: dict[str, float] = {}
    rounds: dict[str, int] = {}
    scales: dict[str, float | np.ndarray] = {}
    for site, (lo, hi) in raw.items():
        kind, layer = kind_of(site), site.split(".")[0]
        wlo, whi = _widen(site, lo, hi, m)
        if kind == "exp":  # softmax: shift by the largest score, 2^r reduction to a narrow range
            shifts[layer] = hi
            rounds[layer] = max(0, math.ceil(math.log2(max((whi - wlo) / reduced_width, 1.0))))
        elif kind == "inv_sqrt":  # variance scaled per position so that each group's range starts at 1
            scales[site] = position_scales(site, *raw_rows[site], m)
        elif kind in ("gelu", "tanh"):  # input scaled into [-1, 1]
            scales[site] = 1.0 / max(abs(wlo), abs(whi))
    for site in list(scales):
        if kind_of(site) == "gelu":
            scales[site + "_grad"] = scales[site]  # GELU' reads GELU's (scaled) input
    # pass 2: ranges of the transformed inputs (same graph, exact functions)
    exact = FnSet(exact=True, exp_shift=shifts, scales=scales, rounds=rounds)
    observed, _, _ = _record(Twin(model, exact), examples, params)
    fns = FnSet(exact=False, exp_shift=shifts, scales=scales, rounds=rounds)
    targets = {site: _widen(site, lo, hi, m) for site, (lo, hi) in observed.items()}
    rounds_done = 0
    flags: list[RangeFlag] = []
    max_abs = 0.0
    op_max: dict[int, float] = {}
    for attempt in range(1, 4):
        rounds_done = attempt
        for site, (lo, hi) in targets.items():
            if site not in fns or (fns[site].lo, fns[site].hi) != (lo, hi):
                sig = scales.get(site, 1.0) if kind_of(site) in ARG_SCALED else 1.0
                fns[site] = build(site, lo, hi, arg_scale=float(sig))
        op_max = {}
        _, max_abs, flags = _record(Twin(model, fns), examples, params, op_max)
        if not flags:
            break
        seen: dict[str, list[float]] = {}
        for f in flags:  # one widening per site and round, over all of its flags
            r = seen.setdefault(f.site, [f.observed[0], f.observed[1]])
            r[0], r[1] = min(r[0], f.observed[0]), max(r[1], f.observed[1])
        for site, (olo, ohi) in seen.items():
            lo, hi = targets[site]
            targets[site] = _widen(site, min(lo, olo), max(hi, ohi), m)
    # per-operation refresh bounds: VALUE_BOUND_FACTOR x the largest calibrated |value|, at least
    # MIN_VALUE_BOUND, at most the configured refresh bound (ours)
    fns.value_bounds = {
        k: float(min(model.cfg.refresh_bound, max(MIN_VALUE_BOUND, VALUE_BOUND_FACTOR * v)))
        for k, v in op_max.items()
    }
    bk = Twin(model, fns).backend()
    x_rot, km = model.example_inputs(examples[0])
    model.graph.forward_frozen(bk, x_rot, km)
    fns.frozen_ops = bk.op
    return CalibrationReport(fns, observed, max_abs, model.cfg.refresh_bound, rounds_done, flags)


def check_ranges(twin: Twin, examples: Sequence[Example], params: dict[str, np.ndarray]) -> list[RangeFlag]:
    """Every out-of-range approximation input the twin meets on ``examples`` (empty: all in range)."""
    _, _, flags = _record(twin, examples, params)
    return flags
