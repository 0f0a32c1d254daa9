"""Polynomials with one coefficient vector per slot: each slot gets its own polynomial, at the depth of
one polynomial (shared powers), and slots do not mix (ours: GELU's per-channel range classes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from p3eft.fhe import nonlinear, ops, tensor
from p3eft.fhe.context import keygen
from p3eft.fhe.params import ParamSet

CKKS_REL = 1e-4  # encrypted vs plaintext polynomial, relative to max |value| (as test_fhe_nonlinear)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


@pytest.fixture(scope="module")
def ctx_sk():
    return keygen(ParamSet.for_depth(16384, 6))


def test_per_slot_coefficients_give_each_slot_its_own_polynomial_at_one_depth(ctx_sk):
    ctx, sk = ctx_sk
    rng = np.random.default_rng(7)
    # two classes, as calibration makes them: GELU on [-4, 4] and on [-32, 32], each scaled into [-1, 1]
    narrow = nonlinear.polynomial("gelu", lambda x: _gelu(4 * x), -1, 1, 16)
    wide = nonlinear.polynomial("gelu", lambda x: _gelu(32 * x), -1, 1, 16)
    n = 256
    x = rng.uniform(-1, 1, n)
    cls = np.arange(n) % 2  # alternate slots
    coeffs = np.zeros((17, ctx.slots))
    coeffs[:, :n] = np.where(cls[None, :] == 0, narrow.coeffs[:, None], wide.coeffs[:, None])
    ct = tensor.encrypt(ctx, x)
    y_ct = nonlinear.eval_poly_per_slot(ctx, ct, coeffs)
    y = tensor.decrypt(sk, ctx, y_ct)[:n]
    want = np.where(cls == 0, narrow.plain(x), wide.plain(x))
    for k in (0, 1):  # each class within CKKS noise of its own polynomial
        assert np.max(np.abs(y - want)[cls == k]) < CKKS_REL * np.max(np.abs(want[cls == k]))
    # and the narrow slots within the narrow fit's error of GELU
    tol = narrow.max_error() + CKKS_REL * np.max(np.abs(want[cls == 0]))
    assert np.max(np.abs(y - _gelu(4 * x))[cls == 0]) <= tol
    # negative control: the narrow slots under the wide class's polynomial are far off
    assert np.max(np.abs(wide.plain(x) - _gelu(4 * x))[cls == 0]) > 100 * narrow.max_error()
    # same depth as one scalar-coefficient polynomial of that degree
    scalar = nonlinear.eval_poly(ctx, ct, narrow.coeffs)
    assert ctx.level(y_ct) == ctx.level(scalar) == ctx.level(ct) - nonlinear.poly_depth(16)


def test_per_slot_coefficients_reject_a_wrong_shape(ctx_sk):
    ctx, _ = ctx_sk
    ct = tensor.encrypt(ctx, np.zeros(4))
    with pytest.raises(ValueError, match="per-slot coefficients"):
        nonlinear.eval_poly_per_slot(ctx, ct, np.zeros((5, 16)))


def test_per_slot_polynomial_with_large_monomial_coefficients_keeps_ckks_precision(ctx_sk):
    """GELU on [-24, 24] (minilm-l6's outlier channels) scaled to [-1, 1]: degree-16 monomial
    coefficients up to ~2e4 that cancel. Evaluated in the Chebyshev basis the result is within 1e-5
    of the same polynomial on the decrypted input (measured 7e-7); summed over monomial powers, whose
    CKKS noise those coefficients multiply, it was 3.5e-4 to 4.4e-4 off (the negative control)."""
    ctx, sk = ctx_sk
    wide = nonlinear.polynomial("gelu", lambda x: _gelu(24 * x), -1, 1, 16)
    assert np.abs(wide.coeffs).max() > 1e4
    assert np.abs(nonlinear.monomial_to_chebyshev(wide.coeffs)).max() < 20
    n = 2048
    x = np.random.default_rng(3).uniform(-1, 1, n)
    coeffs = np.zeros((17, ctx.slots))
    coeffs[:, :n] = wide.coeffs[:, None]
    ct = tensor.encrypt(ctx, x)
    want = np.polynomial.polynomial.polyval(tensor.decrypt(sk, ctx, ct)[:n], wide.coeffs)
    y = tensor.decrypt(sk, ctx, nonlinear.eval_poly_per_slot(ctx, ct, coeffs))[:n]
    assert np.abs(y - want).max() < 1e-5
    power = nonlinear._power_ladder(ctx, ct)  # negative control: the monomial sum
    big = np.abs(coeffs).max(axis=1) * ctx.params.scale >= 2 * ctx.slots  # what the engine could encode
    terms = [ops.mul_plain(ctx, power(i), coeffs[i], scale=ctx.params.scale) for i in range(1, 17) if big[i]]
    mono = ops.add_plain(ctx, nonlinear._sum_at_lowest_level(ctx, terms), coeffs[0])
    assert np.abs(tensor.decrypt(sk, ctx, mono)[:n] - want).max() > 1e-5


def test_monomial_to_chebyshev_is_the_same_polynomial():
    c = np.random.default_rng(0).normal(size=(9, 3))
    x = np.linspace(-1, 1, 11)
    d = nonlinear.monomial_to_chebyshev(c)
    for j in range(3):
        np.testing.assert_allclose(
            np.polynomial.chebyshev.chebval(x, d[:, j]),
            np.polynomial.polynomial.polyval(x, c[:, j]),
            atol=1e-12,
        )
