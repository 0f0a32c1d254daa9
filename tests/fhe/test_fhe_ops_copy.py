"""Copies and scale alignment: the binding has no copy constructor, so the engine clones itself."""

import numpy as np
import pytest

from p3eft.fhe import ops, tensor
from p3eft.fhe.context import LevelError


def test_copy_is_independent_and_equal(n8192):
    ctx, sk = n8192
    x = np.linspace(-1, 1, 64)
    a = tensor.encrypt(ctx, x)
    b = ops.copy(ctx, a)
    assert b.seal is not a.seal
    ctx.evaluator.negate_inplace(a.seal)  # changing one in place leaves the other alone
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, b)[:64], x, atol=1e-6)


@pytest.mark.parametrize("gap", [1e-7, 5.5e-3])
def test_sub_at_one_level_with_different_scales(n8192, gap):
    """At one level with scales apart (5.5e-3: what minilm-l6's LayerNorm output carried into its FFN
    residual), one operand is brought onto the other's scale by a product with 1, one level down;
    relabelling it instead, as the engine once did, is off by the gap times the value (checked)."""
    ctx, sk = n8192
    x, y = np.linspace(-1, 1, 64), np.linspace(100, 200, 64)
    a = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)  # one level down, scale s
    b = ops.mul_plain(ctx, tensor.encrypt(ctx, y), 1.0, scale=a.seal.scale * (1 + gap))  # a drifted scale
    assert a.seal.scale != b.seal.scale and ctx.level(a) == ctx.level(b)
    for diff, want in ((ops.sub(ctx, a, b), x - y), (ops.sub(ctx, b, a), y - x), (ops.add(ctx, a, b), x + y)):
        assert ctx.level(diff) == ctx.level(a) - 1
        np.testing.assert_allclose(tensor.decrypt(sk, ctx, diff)[:64], want, atol=1e-6)
    relabelled = ops.sub(ctx, a, ops.relabel(ctx, b, a.seal.scale))  # the old path: off by ~gap * |y|
    assert np.abs(tensor.decrypt(sk, ctx, relabelled)[:64] - (x - y)).max() > 0.5 * gap * 100


def test_add_at_level_0_with_different_scales_is_refused(n8192):
    ctx, _ = n8192
    a = ops.drop_to(ctx, tensor.encrypt(ctx, np.ones(8)), 0)
    b = ops.relabel(ctx, a, a.seal.scale * (1 + 1e-3))
    with pytest.raises(LevelError, match="level 0"):
        ops.add(ctx, a, b)
