"""Non-linear functions under encryption: against the same approximation in plaintext (CKKS error
only) and against the exact function on the stated range (approximation error)."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.fhe import nonlinear, refresh, tensor
from p3eft.fhe.context import LevelError, keygen
from p3eft.fhe.params import ParamSet

# stated approximation error on the default range: (kind, bound); "rel" = relative to |f(x)|
STATED = {
    "exp": ("rel", 3e-4),
    "reciprocal": ("rel", 1e-4),
    "inv_sqrt": ("rel", 1e-4),
    "gelu": ("abs", 2e-2),
    "tanh": ("abs", 2.5e-2),
}
CKKS_REL = 1e-4  # encrypted vs plaintext approximation, relative to max |value| (measured ~1e-6..5e-5)


@pytest.fixture(scope="module")
def deep():
    """N=16384 with depth 7 (400 bits, 128-bit secure): enough for every default function."""
    return keygen(ParamSet.for_depth(16384, 7))


@pytest.mark.parametrize("name", list(STATED))
def test_approximation_error_on_range(name):
    approx = nonlinear.default_catalogue()[name]
    kind, bound = STATED[name]
    err = approx.max_rel_error() if kind == "rel" else approx.max_error()
    assert err <= bound, f"{name}: {kind} error {err:.2e} above the stated {bound:.0e}"
    assert approx.depth == {"exp": 6, "reciprocal": 8, "inv_sqrt": 6, "gelu": 4, "tanh": 4}[name]


@pytest.mark.parametrize("name", list(STATED))
def test_encrypted_matches_plain_approximation_and_exact(deep, rng, name):
    ctx, sk = deep
    approx = nonlinear.default_catalogue()[name]
    x = np.concatenate([[approx.lo, approx.hi], rng.uniform(approx.lo, approx.hi, 62)])
    refresher = (
        refresh.LocalRefresher(ctx, sk, bound=8.0) if approx.levels_needed(ctx) > ctx.top_level else None
    )
    y = tensor.decrypt(sk, ctx, approx.encrypted(ctx, tensor.encrypt(ctx, x), refresher))
    plain = approx.plain(x)
    scale = np.max(np.abs(plain))
    assert np.max(np.abs(y - plain)) <= CKKS_REL * scale
    kind, bound = STATED[name]
    exact = approx.exact(x)
    err = np.abs(y - exact) / (np.abs(exact) if kind == "rel" else 1.0)
    assert np.max(err) <= bound + CKKS_REL * scale / (np.min(np.abs(exact)) if kind == "rel" else 1.0)
    if refresher is not None:
        assert refresher.calls >= 1


def test_too_few_levels_without_refresher_is_a_clear_error(deep):
    ctx, _ = deep
    with pytest.raises(LevelError, match="refresher"):
        nonlinear.inv_sqrt().encrypted(ctx, tensor.encrypt(ctx, np.ones(4), level=5))


def test_inv_sqrt_spends_exactly_six_levels(deep, rng):
    # the depth the table states is the depth the ciphertext loses (2 levels per Newton step, not 3)
    ctx, sk = deep
    approx = nonlinear.inv_sqrt()
    x = rng.uniform(approx.lo, approx.hi, 64)
    out = approx.encrypted(ctx, tensor.encrypt(ctx, x, level=6))
    assert ctx.level(out) == 0
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, out), approx.plain(x), rtol=1e-4)


def test_every_approximation_states_its_behaviour_outside_its_range():
    for name, approx in nonlinear.default_catalogue().items():
        assert isinstance(approx.outside, str) and len(approx.outside) > 20, name


@pytest.mark.parametrize("name", ["reciprocal", "inv_sqrt", "exp"])
def test_encrypted_error_is_the_tables_error(deep, rng, name):
    # no scale relabelling: under encryption the relative error stays the approximation's own (the
    # table's 1.6e-6 for reciprocal), not 10x more as when products were relabelled to 2^40
    ctx, sk = deep
    approx = nonlinear.default_catalogue()[name]
    refresher = (
        refresh.LocalRefresher(ctx, sk, bound=8.0) if approx.levels_needed(ctx) > ctx.top_level else None
    )
    x = np.concatenate([np.linspace(approx.lo, approx.hi, 64), rng.uniform(approx.lo, approx.hi, 64)])
    y = tensor.decrypt(sk, ctx, approx.encrypted(ctx, tensor.encrypt(ctx, x), refresher))
    rel = np.max(np.abs(y / approx.exact(x) - 1))
    assert rel <= 1.1 * approx.max_rel_error() + 5e-7, (
        f"{name}: {rel:.2e} vs table {approx.max_rel_error():.2e}"
    )


def test_repeated_squaring_keeps_the_true_scale(deep, rng):
    from p3eft.fhe import ops

    ctx, sk = deep
    x = rng.uniform(1.0, 1.5, 64)
    ct = tensor.encrypt(ctx, x)
    for _ in range(5):
        ct = ops.square(ctx, ct)
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, ct), x**32, rtol=2e-6)  # relabelling: ~1e-4
    assert ops.scale_drift(ctx) > 1e-7  # the primes are not 2^40: relabelling would have cost this much


def test_eval_poly_generic(deep, rng):
    ctx, sk = deep
    coeffs = np.array([0.5, -1.0, 0.25, 0.0, 0.125, 0.0, 0.0, -0.01])
    x = rng.uniform(-1.5, 1.5, 32)
    y = tensor.decrypt(sk, ctx, nonlinear.eval_poly(ctx, tensor.encrypt(ctx, x), coeffs))
    np.testing.assert_allclose(y, np.polynomial.polynomial.polyval(x, coeffs), atol=1e-5)


def test_softmax_over_score_diagonals(deep, rng):
    from p3eft.fhe import ccops
    from p3eft.fhe.context import Layout

    ctx, sk = deep
    s = 4
    scores = rng.uniform(-2, 2, (s, s))
    lay = Layout(1, s, 16, "rows")
    diags = [
        tensor.encrypt(ctx, np.array([[scores[i, (i + d) % s]] for i in range(s)]), lay) for d in range(s)
    ]
    exp_a = nonlinear.exp(-2.0, 2.0, squarings=2)
    recip_a = nonlinear.reciprocal(s * np.exp(-2.0) * 0.9, s * np.exp(2.0) * 1.1)
    refresher = refresh.LocalRefresher(ctx, sk, bound=64.0)
    probs = ccops.softmax_diagonals(ctx, diags, exp_a, recip_a, refresher)
    got = np.array([[tensor.decrypt(sk, ctx, probs[(j - i) % s])[i, 0] for j in range(s)] for i in range(s)])
    want = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=2e-3)


# --- out-of-range slots (issue 9, finding 2) ------------------------------------------------------


@pytest.mark.parametrize("name", list(STATED))
def test_one_slot_at_four_times_the_range_leaves_the_others_alone(deep, rng, name):
    ctx, sk = deep
    approx = nonlinear.default_catalogue()[name]
    glo, ghi = approx.guard_range
    assert approx.peak < 2.0**50  # bounded construction: far below any modulus of ours
    far = [ghi, glo] if glo < 0 else [ghi, approx.lo / 50]  # both ends of the guard range
    x = np.concatenate([far, rng.uniform(approx.lo, approx.hi, 62)])
    assert list(approx.range_flags(x[:2])) == [1, 1] and not approx.range_flags(x[2:]).any()
    refresher = (
        refresh.LocalRefresher(ctx, sk, bound=8.0) if approx.levels_needed(ctx) > ctx.top_level else None
    )
    y = tensor.decrypt(sk, ctx, approx.encrypted(ctx, tensor.encrypt(ctx, x), refresher))
    kind, bound = STATED[name]
    exact = approx.exact(x[2:])
    err = np.abs(y[2:] - exact) / (np.abs(exact) if kind == "rel" else 1.0)
    assert np.max(err) <= bound + 1e-4, f"{name}: in-range slots disturbed ({np.max(err):.2e})"
    # the far slots follow the construction (not the function), bounded by its stated peak
    assert np.all(np.abs(y[:2]) <= approx.peak * 1.001 + 1e-3)
    np.testing.assert_allclose(y[:2], approx.plain(x[:2]), rtol=1e-3, atol=1e-3)


def test_negative_control_an_unguarded_reciprocal_corrupts_the_other_slots(deep, rng):
    # the same input through a first guess calibrated on [1, 8] only (guard 1, the former construction):
    # the far slot's iterates explode, wrap modulo q, and the in-range slots are lost with it
    ctx, sk = deep
    unguarded = nonlinear.reciprocal(guard=1.0)
    x = np.concatenate([[32.0], rng.uniform(1.0, 8.0, 63)])
    y = tensor.decrypt(sk, ctx, unguarded.encrypted(ctx, tensor.encrypt(ctx, x)))
    assert np.max(np.abs(y[1:] - 1 / x[1:])) > 1.0


def test_a_peak_above_the_bottom_prime_needs_a_spare_level(deep):
    ctx, _ = deep
    approx = nonlinear.exp()
    assert approx.peak > nonlinear.level0_headroom(ctx) and approx.levels_needed(ctx) == approx.depth + 1
    with pytest.raises(LevelError, match="to spare"):
        approx.encrypted(ctx, tensor.encrypt(ctx, np.zeros(4), level=approx.depth))


def test_range_flags_and_encrypted_indicator(deep):
    ctx, sk = deep
    x = np.array([1.0, 8.0, 0.5, 30.0, 33.0, -1.0, np.nan])
    assert list(nonlinear.range_flags(x, 1.0, 8.0)) == [0, 0, 1, 1, 2, 2, 2]
    vals = np.array([-4.0, 0.0, 4.0, 4.5, -6.0, 16.0])
    ind = tensor.decrypt(sk, ctx, nonlinear.range_indicator(ctx, tensor.encrypt(ctx, vals), -4.0, 4.0))
    assert np.all(ind[:3] <= 1 + 1e-6) and np.all(ind[3:] > 1.1)
    np.testing.assert_allclose(ind, (vals / 4) ** 2, atol=1e-6)


def test_ensure_levels_refreshes_again_when_the_refresher_spends_a_level(deep, rng):
    """A refresher whose answer is one level below the top (PrivTuner's backend after a scale reset)
    still gives a phase that needs every level above the floor: a second refresh, not a LevelError.
    Control: a phase that a single answer fits takes one refresh."""
    from p3eft.fhe import ops
    from p3eft.fhe.context import Layout

    ctx, sk = deep
    inner = refresh.LocalRefresher(ctx, sk, bound=8.0)
    calls = []

    class SpendsALevel:
        min_level = inner.min_level

        def __call__(self, ct):
            calls.append(ctx.level(ct))
            out = inner(ct)
            return ops.mul_plain(ctx, out, 1.0) if len(calls) == 1 else out

    x = rng.uniform(-1, 1, ctx.slots)
    low = ctx.encrypt_slots(x, Layout(1), level=inner.min_level)
    room = ctx.top_level - inner.min_level
    out = nonlinear.ensure_levels(ctx, low, room, SpendsALevel())
    assert len(calls) == 2 and ctx.level(out) == ctx.top_level
    assert np.abs(sk.decrypt_slots(ctx, out) - x).max() < 1e-5
    calls.clear()
    out = nonlinear.ensure_levels(ctx, low, room - 1, SpendsALevel())
    assert len(calls) == 1 and ctx.level(out) == ctx.top_level - 1
    with pytest.raises(LevelError, match="more than a fresh ciphertext has"):
        nonlinear.ensure_levels(ctx, low, room + 1, inner)
