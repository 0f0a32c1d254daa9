"""Copies and scale alignment: the binding has no copy constructor, so the engine clones itself."""

import numpy as np

from p3eft.fhe import ops, tensor


def test_copy_is_independent_and_equal(n8192):
    ctx, sk = n8192
    x = np.linspace(-1, 1, 64)
    a = tensor.encrypt(ctx, x)
    b = ops.copy(ctx, a)
    assert b.seal is not a.seal
    ctx.evaluator.negate_inplace(a.seal)  # changing one in place leaves the other alone
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, b)[:64], x, atol=1e-6)


def test_sub_at_one_level_with_different_scales(n8192):
    """The path that relabels (same level, scales apart by a prime's drift from 2^40) gives the difference."""
    ctx, sk = n8192
    x, y = np.linspace(-1, 1, 64), np.linspace(1, 2, 64)
    a = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)  # one level down, scale s
    b = ops.mul_plain(ctx, tensor.encrypt(ctx, y), 1.0, scale=a.seal.scale * (1 + 1e-7))  # a drifted scale
    assert a.seal.scale != b.seal.scale and ctx.level(a) == ctx.level(b)
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, ops.sub(ctx, a, b))[:64], x - y, atol=1e-4)
