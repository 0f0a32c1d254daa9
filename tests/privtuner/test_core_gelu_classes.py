"""GELU range classes (ours): a tiny BERT with one injected outlier FFN channel, as in MiniLM.

The ordinary channels' inputs stay within a few units and one channel reaches ~20. One range for the
whole site (the old design, here the negative control) fits GELU on [-32, 32], where a degree-16
polynomial is off by ~0.5 everywhere; with one class per (position group, channel) range the
ordinary slots keep the narrow class's accuracy, and the encrypted path (per-slot coefficient
vectors, per-slot input scales folded into the up-projection kernel) still equals the twin."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from p3eft.privtuner.approx import FnSet, SlotFn, build, gelu_exact
from p3eft.privtuner.backend import PlainBackend
from p3eft.privtuner.calibration import calibrate, slot_fn
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.local import verify_local
from p3eft.privtuner.model import from_hf, tiny_hf_model
from p3eft.privtuner.toy import random_examples
from p3eft.privtuner.twin import PrivTunerModel, Twin

OUTLIER = 5  # the injected channel
SITE = "L0.gelu"


@lru_cache(maxsize=1)
def outlier_model():
    """Tiny BERT (hidden 16, FFN 32, one layer) whose up-projection is scaled so that the ordinary
    channels see inputs of a few units (MiniLM-like) and channel OUTLIER ~12x more."""
    cfg = PrivTunerConfig(model="tiny", layers=1, max_len=4, lora_rank=2, adapt_from=0)
    w = from_hf(tiny_hf_model(hidden=16, intermediate=32, layers=1), 1, "tiny", True, "test")
    lw = w.layers[0]
    lw.w1 *= 8.0
    lw.b1 *= 8.0
    lw.w1[OUTLIER] *= 12.0
    lw.b1[OUTLIER] *= 12.0
    model = PrivTunerModel(cfg, w)
    params = model.init_params(b_scale=0.3)
    examples = random_examples(model, 6)
    report = calibrate(model, examples, params)
    return model, report, model.reparametrize_head(params, None, report.fns.head_std), examples


class _GeluCapture(PlainBackend):
    """Keeps every (chunk, scaled input, output) of the GELU site."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.seen: list[tuple[int, np.ndarray, np.ndarray]] = []

    def fn(self, site, x, part=None):
        y = super().fn(site, x, part)
        if site == SITE:
            self.seen.append((part, x.copy(), y.copy()))
        return y


def _gelu_errors(model, fns: FnSet, params, examples) -> tuple[np.ndarray, list]:
    """Per slot (chunks, seq, width): the largest |twin GELU - exact GELU of the same input|."""
    twin = Twin(model, fns)
    sf = fns[SITE]
    sig, off = sf.scales(), sf.offsets()
    worst = np.zeros(sf.slot_class.shape)
    flags = []
    for ex in examples:
        bk = _GeluCapture(model.spec, fns)
        twin.forward(ex, params, bk=bk)
        flags.extend(bk.flags)
        for c, x, y in bk.seen:
            worst[c] = np.maximum(worst[c], np.abs(y - gelu_exact((x + off[c]) / sig[c])))
    return worst, flags


def _raw_range(c) -> tuple[float, float]:
    """A class's range in the raw GELU input (before x' = sigma x - tau)."""
    return (c.lo + c.arg_offset) / c.arg_scale, (c.hi + c.arg_offset) / c.arg_scale


def _single_range(report) -> FnSet:
    """The old design: one range for every slot (here the union of the class ranges)."""
    lo, hi = zip(*(_raw_range(c) for c in report.fns[SITE].classes), strict=True)
    zeros = np.zeros_like(report.fns[SITE].slot_class)
    one = {s: slot_fn(s, zeros, [(min(lo), max(hi))]) for s in (SITE, SITE + "_grad")}
    scales = dict(report.fns.scales) | {s: f.scales() for s, f in one.items()}
    offsets = dict(report.fns.offsets) | {s: f.offsets() for s, f in one.items()}
    fns = report.fns.copy()
    fns.update(one)
    fns.scales, fns.offsets = scales, offsets
    return fns


def test_outlier_channel_gets_its_own_class_and_ordinary_slots_keep_narrow_accuracy():
    model, report, params, examples = outlier_model()
    sf = report.fns[SITE]
    assert isinstance(sf, SlotFn)
    width = model.spec.width
    channel = np.arange(sf.slot_class.shape[0] * width).reshape(-1, 1, width)  # chunk-major channel ids
    outlier = np.broadcast_to(channel == OUTLIER, sf.slot_class.shape)
    # the premise: the injected channel's range is far wider than the others'
    bounds = [max(abs(v) for v in _raw_range(c)) for c in sf.classes]
    narrow = int(np.argmin(bounds))
    assert np.all(sf.slot_class[outlier] != narrow)
    assert max(bounds[k] for k in np.unique(sf.slot_class[outlier])) >= 4 * bounds[narrow]
    ordinary = sf.slot_class == narrow
    assert ordinary.mean() > 0.9  # the ordinary channels share the narrow class
    fit = sf.classes[narrow].approximation.max_error()
    assert fit <= 2e-3  # approx.build's tolerance: the narrow range's accuracy
    err, flags = _gelu_errors(model, report.fns, params, examples)
    assert not flags
    # measured on the twin's own GELU inputs (x1.05: max_error samples the range on a grid)
    assert 0 < np.max(err[ordinary]) <= 1.05 * fit
    # negative control: one range for all slots is far worse on the very same ordinary slots
    single = _single_range(report)
    err1, flags1 = _gelu_errors(model, single, params, examples)
    assert not flags1
    assert np.max(err1[ordinary]) > 20 * fit
    # and the twin's logits follow the exact model more closely with the classes
    exact = Twin(model, report.fns, exact=True)
    d_cls = max(
        np.max(np.abs(Twin(model, report.fns).logits(e, params) - exact.logits(e, params))) for e in examples
    )
    d_one = max(
        np.max(np.abs(Twin(model, single).logits(e, params) - exact.logits(e, params))) for e in examples
    )
    assert d_cls < d_one / 5


def test_input_outside_its_class_is_flagged_with_the_class():
    model, report, params, examples = outlier_model()
    sf = report.fns[SITE]
    k = int(sf.slot_class[0, 0, OUTLIER])  # the outlier channel's class at position 0
    c = sf.classes[k]
    fns = report.fns.copy()
    # class k narrowed to a tenth of its range around its middle: that class, and only it, is flagged
    mid, half = (c.lo + c.hi) / 2, (c.hi - c.lo) / 20
    narrowed = build(SITE, mid - half, mid + half, arg_scale=c.arg_scale, arg_offset=c.arg_offset)
    fns[SITE] = sf.with_class(k, narrowed)
    twin = Twin(model, fns)
    for ex in examples:
        twin.logits(ex, params)
    assert twin.flags and all(f.site == SITE and f.slot_class == k for f in twin.flags)
    assert all(f.observed[0] < mid - half or f.observed[1] > mid + half for f in twin.flags)
    # negative control: the calibrated classes flag nothing
    calibrated = Twin(model, report.fns)
    for ex in examples:
        calibrated.logits(ex, params)
    assert not calibrated.flags


@pytest.mark.slow
def test_encrypted_step_equals_twin_with_per_slot_classes():
    # per-slot coefficient vectors and per-slot input scales in the kernel, forward and GELU' backward
    model, report, params, examples = outlier_model()
    assert len(report.fns[SITE].classes) >= 2
    result = verify_local(model, report.fns, params, examples[:1], 0.5)
    logits = np.array(result["steps"][0]["logits"])
    assert np.max(np.abs(logits)) > 1e-3  # non-trivial values
    assert result["logit_max_abs_diff"] < 1e-4
    assert result["step_max_abs_diff"] < 1e-3
    assert not result["range_flags"]
