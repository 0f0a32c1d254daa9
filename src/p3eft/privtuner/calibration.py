"""Input ranges of every approximation, calibrated on training data; out-of-range inputs flagged (ours).

Procedure (:func:`calibrate`):

1. run the *exact* twin (forward and backward) on the calibration examples, recording the min and
   max of every site's input over every slot (padding rows and padded features included: the
   encrypted path evaluates them too);
2. GELU (and GELU', which reads the same input) gets one range class per slot (ours,
   :func:`slot_classes`): each FFN channel's calibrated range, per position group ([CLS] alone, the
   other positions together), is widened and snapped outward onto a power-of-two ladder that always
   contains the site's typical range, and each class is mapped onto [-1, 1] and fitted on its own;
   every LayerNorm variance gets one public factor per position that puts the position's calibrated
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
4. run the *approximate* twin on the same examples; a site (or a GELU class) whose inputs now leave
   its range (the approximations shift later values a little) is widened again and refitted (up to 3
   rounds);
5. with ``cfg.head_standardize``, the mean and spread of the approximate twin's pooled features on
   the same examples become the head's standardization (:mod:`p3eft.privtuner.standardize`), fixed in
   each round before that round's pass, so that the largest |value| the report checks against the
   refresh bound covers the head's extra operations.

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
from p3eft.privtuner.approx import ARG_SCALED, FnSet, SlotFn, build, kind_of
from p3eft.privtuner.backend import RangeFlag
from p3eft.privtuner.standardize import HeadStandardizer
from p3eft.privtuner.twin import Example, PrivTunerModel, Twin

POSITIVE = ("recip", "inv_sqrt")
SLOT_SITES = ("gelu",)  # sites with one range class per slot (GELU' follows GELU's classes)
# every GELU class contains [-core, core], core = this x the median channel bound, rounded up to a power
# of two (ours, measured): on MiniLM (2 layers, 16 tokens, 16 calibration sentences), with factor 1
# (core 4) 67 of 200 held-out sentences left a class range at layer 0, with factor 2 (core 8) none
# (benchmarks/privtuner_layernorm.py --held-out 200 [--gelu-core-factor 1])
CORE_FACTOR = 2.0


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
            "head_std": None if self.fns.head_std is None else self.fns.head_std.describe(),
        }


def _record(
    twin: Twin,
    examples: Sequence[Example],
    params: dict[str, np.ndarray],
    row_ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    slot_ranges: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] | None = None,
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
        if row_ranges is not None:
            for site, (rlo, rhi) in bk.row_ranges.items():
                if site in row_ranges:
                    plo, phi = row_ranges[site]
                    rlo, rhi = np.minimum(plo, rlo), np.maximum(phi, rhi)
                row_ranges[site] = (rlo, rhi)
        if slot_ranges is not None:
            for site, parts in bk.slot_ranges.items():
                mine = slot_ranges.setdefault(site, {})
                for c, (slo, shi) in parts.items():
                    if c in mine:
                        slo, shi = np.minimum(mine[c][0], slo), np.maximum(mine[c][1], shi)
                    mine[c] = (slo, shi)
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
    sigma = np.empty(seq)
    for rows in _position_groups(seq):
        wlo, _ = _widen(site, float(np.min(row_lo[rows])), float(np.max(row_hi[rows])), margin)
        sigma[rows] = 1.0 / wlo
    return sigma


def _position_groups(seq: int) -> list[list[int]]:
    """The positions of :data:`OWN_SCALE_POSITIONS` each alone, all other positions together."""
    groups = [[p] for p in OWN_SCALE_POSITIONS if p < seq]
    rest = [r for r in range(seq) if r not in OWN_SCALE_POSITIONS]
    return groups + ([rest] if rest else [])


def _ladder_up(v: np.ndarray, core: float) -> np.ndarray:
    """The smallest core * 2^k >= v (k >= 0): the ladder of class bounds."""
    return core * 2.0 ** np.maximum(0.0, np.ceil(np.log2(np.maximum(v, core) / core) - 1e-12))


def slot_classes(
    lo: np.ndarray, hi: np.ndarray, margin: float, core_factor: float = CORE_FACTOR
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Range classes of a per-slot site (ours): ``lo``, ``hi`` are the calibrated per-slot minimum and
    maximum (chunks, seq, width); returns each slot's class (same shape) and each class's range.

    Per position group (:func:`_position_groups`: [CLS] alone, the other positions together) and
    channel, the calibrated range is widened by ``margin`` (x width on each side) and its ends are
    snapped outward onto the ladder -core * 2^i, core * 2^j, with ``core`` ``core_factor``
    (default :data:`CORE_FACTOR`) x the median channel bound, rounded up to a power of two. Slots with the same snapped range form a class. Why: the ladder
    keeps a handful of classes (MiniLM: ~10 per site) whose ranges are data-driven but never tighter
    than [-core, core], so a channel that was nearly constant on the calibration examples does not get
    a range that any other example leaves (a polynomial diverges right outside its range); and [CLS]
    carries the largest outliers (MiniLM: 24 in one channel, the other rows of that channel within
    12), so it gets classes of its own. Positions and channels are public, so the classes reveal
    nothing about the data owner's examples (they come from the model owner's calibration set)."""
    chunks, seq, width = lo.shape
    glo = np.empty((len(_position_groups(seq)), chunks, width))
    ghi = np.empty_like(glo)
    groups = _position_groups(seq)
    for g, rows in enumerate(groups):
        glo[g] = np.min(lo[:, rows, :], axis=1)
        ghi[g] = np.max(hi[:, rows, :], axis=1)
    w = np.maximum(ghi - glo, 1e-3)
    wlo, whi = glo - margin * w, ghi + margin * w
    bound = np.maximum(np.abs(wlo), np.abs(whi))
    core = float(2.0 ** np.ceil(np.log2(max(core_factor * float(np.median(bound)), 1e-6))))
    neg, pos = -_ladder_up(-wlo, core), _ladder_up(whi, core)
    keys = sorted(set(zip(neg.ravel().tolist(), pos.ravel().tolist(), strict=True)))
    index = {k: i for i, k in enumerate(keys)}
    cls = np.empty((chunks, seq, width), dtype=np.int64)
    for g, rows in enumerate(groups):
        per_channel = np.array([index[k] for k in zip(neg[g].ravel(), pos[g].ravel(), strict=True)])
        cls[:, rows, :] = per_channel.reshape(chunks, 1, width)
    return cls, [(float(a), float(b)) for a, b in keys]


def slot_fn(site: str, cls: np.ndarray, ranges: list[tuple[float, float]]) -> SlotFn:
    """Class k mapped onto [-1, 1] by x' = sigma_k x - tau_k and fitted there (see SlotFn)."""
    fns = []
    for lo, hi in ranges:
        sig = 2.0 / (hi - lo)
        fns.append(build(site, -1.0, 1.0, arg_scale=sig, arg_offset=sig * (lo + hi) / 2.0))
    return SlotFn(site, fns, cls)


def _widen(site: str, lo: float, hi: float, margin: float) -> tuple[float, float]:
    if kind_of(site) in POSITIVE:
        if lo <= 0:
            raise P3eftError(f"site {site} saw a non-positive input {lo}; cannot calibrate")
        return lo / (1 + 4 * margin), hi * (1 + 4 * margin)
    w = max(hi - lo, 1e-3)
    return lo - margin * w, hi + margin * w


def pooled_features(twin: Twin, examples: Sequence[Example], params: dict[str, np.ndarray]) -> np.ndarray:
    """The classifier's pooled input (before any standardization), one row per example."""
    d = twin.model.weights.hidden
    rows = []
    for ex in examples:
        _, cache = twin.forward(ex, params, keep=True)
        assert cache is not None
        rows.append(np.asarray(cache.pooled)[0, :d])
    return np.stack(rows)


def calibrate(
    model: PrivTunerModel,
    examples: Sequence[Example],
    params: dict[str, np.ndarray],
    margin: float | None = None,
    reduced_width: float = 2.0,
    core_factor: float = CORE_FACTOR,
) -> CalibrationReport:
    """Fit every site's approximation to its calibrated range (see module doc).

    ``params`` are the initial parameters with the plain head (``model.init_params()``); the returned
    ``fns.head_std`` says how a session's parameters must be laid out (``init_params(head_std=...)``).
    """
    if not examples:
        raise P3eftError("calibration needs at least one example")
    if model.cfg.head_standardize and len(examples) < 2:
        raise P3eftError("standardizing the head needs at least two calibration examples")
    plain_params = params
    m = model.cfg.margin if margin is None else margin
    # pass 1: raw ranges with the exact functions and no transformation
    raw_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    raw_slots: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    raw, _, _ = _record(Twin(model, exact=True), examples, params, row_ranges=raw_rows, slot_ranges=raw_slots)
    shifts: dict[str, float] = {}
    rounds: dict[str, int] = {}
    scales: dict[str, float | np.ndarray] = {}
    slot_fns: dict[str, SlotFn] = {}
    offsets: dict[str, np.ndarray] = {}
    for site, (lo, hi) in raw.items():
        kind, layer = kind_of(site), site.split(".")[0]
        wlo, whi = _widen(site, lo, hi, m)
        if kind == "exp":  # softmax: shift by the largest score, 2^r reduction to a narrow range
            shifts[layer] = hi
            rounds[layer] = max(0, math.ceil(math.log2(max((whi - wlo) / reduced_width, 1.0))))
        elif kind == "inv_sqrt":  # variance scaled per position so that each group's range starts at 1
            scales[site] = position_scales(site, *raw_rows[site], m)
        elif kind in SLOT_SITES:  # one range class per slot, each mapped onto [-1, 1]
            parts = raw_slots[site]
            slo = np.stack([parts[c][0] for c in range(len(parts))])
            shi = np.stack([parts[c][1] for c in range(len(parts))])
            cls, class_ranges = slot_classes(slo, shi, m, core_factor)
            slot_fns[site] = slot_fn(site, cls, class_ranges)
            slot_fns[site + "_grad"] = slot_fn(site + "_grad", cls, class_ranges)  # GELU's input
            scales[site] = scales[site + "_grad"] = slot_fns[site].scales()
            offsets[site] = offsets[site + "_grad"] = slot_fns[site].offsets()
        elif kind == "tanh":  # input scaled into [-1, 1]
            scales[site] = 1.0 / max(abs(wlo), abs(whi))
    # pass 2: ranges of the transformed inputs (same graph, exact functions)
    exact = FnSet(exact=True, exp_shift=shifts, scales=scales, rounds=rounds, offsets=offsets)
    observed, _, _ = _record(Twin(model, exact), examples, params)
    fns = FnSet(exact=False, exp_shift=shifts, scales=scales, rounds=rounds, offsets=offsets)
    fns.update(slot_fns)
    targets = {site: _widen(site, lo, hi, m) for site, (lo, hi) in observed.items() if site not in slot_fns}
    rounds_done = 0
    flags: list[RangeFlag] = []
    max_abs = 0.0
    for attempt in range(1, 4):
        rounds_done = attempt
        for site, (lo, hi) in targets.items():
            if site not in fns or (fns[site].lo, fns[site].hi) != (lo, hi):
                sig = scales.get(site, 1.0) if kind_of(site) in ARG_SCALED else 1.0
                fns[site] = build(site, lo, hi, arg_scale=float(sig))
        if model.cfg.head_standardize:  # step 5 (pooled features do not depend on the head)
            hs = HeadStandardizer.from_features(pooled_features(Twin(model, fns), examples, plain_params))
            fns.head_std = hs
            params = model.reparametrize_head(plain_params, None, hs)
        _, max_abs, flags = _record(Twin(model, fns), examples, params)
        if not flags:
            break
        seen: dict[tuple[str, int | None], list[float]] = {}
        for f in flags:  # one widening per site (or class) and round, over all of its flags
            r = seen.setdefault((f.site, f.slot_class), [f.observed[0], f.observed[1]])
            r[0], r[1] = min(r[0], f.observed[0]), max(r[1], f.observed[1])
        for (site, k), (olo, ohi) in seen.items():
            if k is None:
                lo, hi = targets[site]
                targets[site] = _widen(site, min(lo, olo), max(hi, ohi), m)
                continue
            sf = fns[site]  # a class of a per-slot site: refit on the widened range, same scale
            assert isinstance(sf, SlotFn)
            old = sf.classes[k]
            lo, hi = _widen(site, min(old.lo, olo), max(old.hi, ohi), m)
            refit = build(site, lo, hi, arg_scale=float(old.arg_scale), arg_offset=float(old.arg_offset))
            fns[site] = sf.with_class(k, refit)
    # one refresh bound for every value, the configured ceiling (ours): the engine's refresh masks with
    # integers, so its precision does not depend on the bound, and a tighter per-value bound would
    # only shrink the hiding margin of values that grow as training moves the adapter
    fns.refresh_bound = float(model.cfg.refresh_bound)
    return CalibrationReport(fns, observed, max_abs, model.cfg.refresh_bound, rounds_done, flags)


def check_ranges(twin: Twin, examples: Sequence[Example], params: dict[str, np.ndarray]) -> list[RangeFlag]:
    """Every out-of-range approximation input the twin meets on ``examples`` (empty: all in range)."""
    _, _, flags = _record(twin, examples, params)
    return flags
