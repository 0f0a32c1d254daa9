"""The kernel pool: pooled products are the one-process ciphertexts bit for bit, its workers' CPU is
counted, and a dead worker is an error, not a hang."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from p3eft.errors import P3eftError
from p3eft.fhe import serial, tensor
from p3eft.fhe.context import keygen
from p3eft.fhe.linalg import StaggeredMatrix
from p3eft.fhe.parallel import KernelPool, KernelRecipe, Product, giant_ranges
from p3eft.fhe.params import get_param_set


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    ps = get_param_set("N8192")
    weights = [rng.normal(size=(256, 256)) / 16, rng.normal(size=(200, 256)) / 16]
    mats = [StaggeredMatrix(w, ps.slots) for w in weights]
    steps = sorted({s for m in mats for s in m.galois_steps()})
    ctx, sk = keygen(ps, steps)
    xs = [rng.uniform(-1, 1, 256) for _ in mats]
    cts = [tensor.encrypt(ctx, x, m.input_layouts()[0]) for x, m in zip(xs, mats, strict=True)]
    with KernelPool(ctx.to_payload(), workers=2) as pool:
        yield ctx, sk, weights, mats, xs, cts, pool


def _product(m: StaggeredMatrix, w: np.ndarray, ct, slots: int) -> Product:
    lay = m.output_layouts()[0]
    return Product(m, KernelRecipe.of(StaggeredMatrix, w, slots), [ct], 1, lay, (m.copies, m.window))


def test_pooled_products_are_the_local_ciphertexts_bit_for_bit(setup):
    ctx, sk, weights, mats, xs, cts, pool = setup
    items = [_product(m, w, c, ctx.slots) for m, w, c in zip(mats, weights, cts, strict=True)]
    cpu0 = pool.worker_cpu_s
    pooled = pool.products(ctx, items)
    assert pool.worker_cpu_s > cpu0  # the workers' CPU is counted
    for (y,), m, w, x, c in zip(pooled, mats, weights, xs, cts, strict=True):
        (local,) = m(ctx, c)
        assert serial.seal_to_bytes(y.seal) == serial.seal_to_bytes(local.seal)
        assert y.seal.scale == local.seal.scale and ctx.level(y) == ctx.level(local)
        np.testing.assert_allclose(tensor.decrypt(sk, ctx, y)[: w.shape[0]], w @ x, atol=1e-4)


def test_one_product_is_split_across_the_workers(setup):
    ctx, sk, weights, mats, xs, cts, pool = setup
    m = mats[0]
    assert m.giant >= 2 and len(giant_ranges(m.giant, pool.workers)) == 2  # both workers get a part
    ((y,),) = pool.products(ctx, [_product(m, weights[0], cts[0], ctx.slots)])
    (local,) = m(ctx, cts[0])
    assert serial.seal_to_bytes(y.seal) == serial.seal_to_bytes(local.seal)


def test_a_wrong_recipe_gives_a_different_product(setup):
    """Negative control: the workers really use the recipe's weights (the check above can fail)."""
    ctx, sk, weights, mats, xs, cts, pool = setup
    wrong = Product(
        mats[0],
        KernelRecipe.of(StaggeredMatrix, weights[0] * 1.5, ctx.slots),
        [cts[0]],
        1,
        mats[0].output_layouts()[0],
        (mats[0].copies, mats[0].window),
    )
    ((y,),) = pool.products(ctx, [wrong])
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, y)[:256], 1.5 * weights[0] @ xs[0], atol=1e-4)


def test_recipes_are_named_by_content():
    w = np.arange(16.0).reshape(4, 4)
    assert (
        KernelRecipe.of(StaggeredMatrix, w, 8192).digest
        == KernelRecipe.of(StaggeredMatrix, w.copy(), 8192).digest
    )
    assert (
        KernelRecipe.of(StaggeredMatrix, w, 8192).digest
        != KernelRecipe.of(StaggeredMatrix, w + 1e-12, 8192).digest
    )
    assert (
        KernelRecipe.of(StaggeredMatrix, w, 8192).digest != KernelRecipe.of(StaggeredMatrix, w, 4096).digest
    )


@pytest.mark.parametrize(("giant", "parts"), [(1, 2), (7, 2), (24, 2), (3, 8), (5, 1)])
def test_giant_ranges_cover_every_step_once(giant, parts):
    ranges = giant_ranges(giant, parts)
    assert [h for a, b in ranges for h in range(a, b)] == list(range(giant))
    assert len(ranges) == min(giant, parts)


def test_a_pool_needs_two_workers():
    with pytest.raises(P3eftError, match="at least 2 workers"):
        KernelPool({}, workers=1)


def test_a_dead_worker_is_an_error_not_a_hang():
    rng = np.random.default_rng(1)
    ps = get_param_set("N8192")
    w = rng.normal(size=(32, 32)) / 6
    m = StaggeredMatrix(w, ps.slots)
    ctx, _ = keygen(ps, m.galois_steps())
    ct = tensor.encrypt(ctx, rng.uniform(-1, 1, 32), m.input_layouts()[0])
    pool = KernelPool(ctx.to_payload(), workers=2)
    try:
        for pid in pool.pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(P3eftError, match="kernel pool"):
            pool.products(ctx, [_product(m, w, ct, ps.slots)])
    finally:
        pool.close()
