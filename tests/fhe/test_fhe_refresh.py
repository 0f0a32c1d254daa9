"""Client-aided refresh: round trip precision, level restored, and the key holder's view."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from p3eft.errors import SecurityError
from p3eft.fhe import ops, refresh, tensor
from p3eft.fhe.context import LevelError

REFRESH_TOL = 1e-5  # stated precision at lambda=30, |m| <= 4 (measured ~2e-6)


def test_round_trip_restores_top_level_within_precision(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-4, 4, ctx.slots)
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    assert ctx.level(low) == ctx.top_level - 1
    fresh = refresh.refresh_local(ctx, sk, low, bound=4.0, lam=30)
    assert ctx.level(fresh) == ctx.top_level
    err = np.max(np.abs(tensor.decrypt(sk, ctx, fresh) - x))
    assert err <= REFRESH_TOL
    # the refreshed ciphertext supports another multiplication
    again = ops.mul_plain(ctx, fresh, 0.5)
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, again), x / 2, atol=REFRESH_TOL)


def test_round_trip_over_bytes(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-1, 1, 64)
    masker = refresh.RefreshMasker(ctx, bound=1.0)
    masked = masker.mask(ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0))
    answer = refresh.refresh_respond_bytes(ctx, sk, ctx.ciphertext_to_bytes(masked))
    out = masker.unmask(ctx.ciphertext_from_bytes(answer))
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, out), x, atol=REFRESH_TOL)


def test_lambda_below_30_and_too_low_level_are_refused(n8192):
    ctx, _ = n8192
    with pytest.raises(SecurityError):
        refresh.RefreshMasker(ctx, bound=1.0, lam=20)
    assert refresh.min_refresh_level(ctx, 4.0, 30) == 1
    bottom = ops.drop_to(ctx, tensor.encrypt(ctx, np.ones(4)), 0)
    with pytest.raises(LevelError, match="refresh"):
        refresh.RefreshMasker(ctx, bound=4.0).mask(bottom)


def _views(ctx, sk, message, bound, lam, repeats):
    out = []
    for _ in range(repeats):
        masker = refresh.RefreshMasker(ctx, bound=bound, lam=lam)
        masked = masker.mask(ops.mul_plain(ctx, tensor.encrypt(ctx, message), 1.0))
        out.append(refresh.key_holder_view(ctx, sk, masked) / (2.0**lam * bound))
    return np.concatenate(out)


def test_key_holder_view_does_not_depend_on_the_message(n8192):
    ctx, sk = n8192
    m1 = np.full(ctx.slots, 3.0)
    m2 = np.full(ctx.slots, -3.0)
    v1 = _views(ctx, sk, m1, 4.0, 30, 4)
    v2 = _views(ctx, sk, m2, 4.0, 30, 4)
    # both views are uniform on [-1, 1] and indistinguishable from each other
    assert stats.ks_2samp(v1, v2).pvalue > 1e-4
    assert stats.kstest(v1, "uniform", args=(-1, 2)).pvalue > 1e-4
    assert abs(v1.mean()) < 0.02 and abs(v2.mean()) < 0.02


def test_the_distribution_test_detects_a_narrow_mask(n8192):
    # negative control: with a mask no wider than the message, the same test tells the messages apart
    ctx, sk = n8192
    m1 = np.full(ctx.slots, 3.0)
    m2 = np.full(ctx.slots, -3.0)
    v1 = _views(ctx, sk, m1, 3.0 / 2**30, 30, 1)
    v2 = _views(ctx, sk, m2, 3.0 / 2**30, 30, 1)
    assert stats.ks_2samp(v1, v2).pvalue < 1e-6
