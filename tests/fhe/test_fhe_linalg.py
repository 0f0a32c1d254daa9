"""Plaintext-matrix x ciphertext products against NumPy, within the stated bound (1e-4 absolute for
entries of size ~1 at scale 2^40; measured errors are ~1e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.fhe import ops, packing, tensor
from p3eft.fhe.context import LevelError
from p3eft.fhe.linalg import BatchMatrix, StaggeredMatrix, staggered_steps
from p3eft.fhe.packing import staggered_layout

TOL = 1e-4
SHAPES = [(64, 64), (48, 100), (200, 64), (256, 256)]  # the conftest fixture has keys for these


def _apply(ctx, sk, weight, x):
    mat = StaggeredMatrix(weight, ctx.slots)
    xs = [
        tensor.encrypt(ctx, xb, lay) for xb, lay in zip(mat.split_input(x), mat.input_layouts(), strict=True)
    ]
    ys = mat(ctx, xs)
    return mat, ys, np.concatenate([tensor.decrypt(sk, ctx, y) for y in ys])


@pytest.mark.parametrize(("n_out", "n_in"), SHAPES)
def test_staggered_matvec_matches_numpy(n8192, rng, n_out, n_in):
    ctx, sk = n8192
    weight = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
    x = rng.uniform(-1, 1, n_in)
    mat, ys, y = _apply(ctx, sk, weight, x)
    np.testing.assert_allclose(y, weight @ x, atol=TOL)
    assert sorted(set(mat.galois_steps())) == sorted(set(staggered_steps(n_out, n_in, ctx.slots)))
    assert all(ctx.level(c) == ctx.top_level - 1 for c in ys)
    # spare slots are used: far fewer diagonals than columns
    assert mat.k_count * (ctx.slots // mat.window) >= mat.window and mat.k_count < max(n_in, 2)


def test_an_all_zero_matrix_gives_an_encryption_of_zero(n8192, rng):
    ctx, sk = n8192
    mat, ys, y = _apply(ctx, sk, np.zeros((64, 64)), rng.uniform(-1, 1, 64))
    np.testing.assert_allclose(y, 0.0, atol=TOL)
    assert all(ctx.level(c) == ctx.top_level - 1 for c in ys)


def test_output_is_replicated_and_restagger_feeds_the_next_layer(n8192, rng):
    ctx, sk = n8192
    w1 = rng.normal(size=(64, 64)) / 8
    w2 = rng.normal(size=(64, 64)) / 8
    x = rng.uniform(-1, 1, 64)
    _, (y,), _ = _apply(ctx, sk, w1, x)
    slots = sk.decrypt_slots(ctx, y)
    np.testing.assert_allclose(slots.reshape(-1, 64), np.tile(w1 @ x, (ctx.slots // 64, 1)), atol=TOL)
    z_in = StaggeredMatrix.restagger(ctx, y)
    assert z_in.layout == staggered_layout(64, ctx.slots)
    np.testing.assert_allclose(
        sk.decrypt_slots(ctx, z_in), packing.pack(w1 @ x, z_in.layout, ctx.slots), atol=TOL
    )
    with pytest.raises(LevelError):  # N8192 has depth 2: two products and a restagger need a refresh
        StaggeredMatrix(w2, ctx.slots)(ctx, z_in)


def test_batch_kernel_serves_many_rows(n8192, rng):
    ps_slots = n8192[0].slots
    ctx, sk = n8192
    from p3eft.fhe.context import keygen

    weight = rng.normal(size=(32, 32)) / 6
    mat = BatchMatrix(weight, ps_slots)
    ctx, sk = keygen(ctx.params, mat.galois_steps())
    x = rng.uniform(-1, 1, (16, 32))
    y = tensor.decrypt(sk, ctx, mat(ctx, tensor.encrypt(ctx, x, mat.input_layout(16))))
    np.testing.assert_allclose(y, x @ weight.T, atol=TOL)
    assert mat.k_count == 32


def test_weights_encoded_once_per_level(n8192, rng):
    ctx, sk = n8192
    mat = StaggeredMatrix(rng.normal(size=(64, 64)), ctx.slots)
    mat.prepare(ctx)
    cached = {id(p) for t in mat.tiles.values() for p in t.encoded[ctx.top_level].values()}
    x = tensor.encrypt(ctx, rng.uniform(-1, 1, 64), mat.input_layouts()[0])
    mat(ctx, x)
    assert {id(p) for t in mat.tiles.values() for p in t.encoded[ctx.top_level].values()} == cached


def test_wrong_layout_and_missing_keys_are_refused(n8192, rng):
    ctx, _ = n8192
    mat = StaggeredMatrix(rng.normal(size=(64, 64)), ctx.slots)
    with pytest.raises(ValueError, match="layout"):
        mat(ctx, tensor.encrypt(ctx, rng.uniform(-1, 1, 64)))
    # a step neither its own key nor its NAF digits' keys cover (others SEAL composes: test_fhe_galois)
    missing = next(s for s in range(3, ctx.slots) if not ctx.can_rotate(s))
    with pytest.raises(LevelError, match="Galois key"):
        ops.rotate(ctx, tensor.encrypt(ctx, np.ones(4)), missing)


def test_two_layers_chain_at_n16384(rng):
    # product -> restagger -> product: three levels, within N16384's four
    from p3eft.fhe.context import keygen
    from p3eft.fhe.params import get_param_set

    ps = get_param_set("N16384")
    w1, w2 = rng.normal(size=(96, 96)) / 10, rng.normal(size=(96, 96)) / 10
    m1, m2 = StaggeredMatrix(w1, ps.slots), StaggeredMatrix(w2, ps.slots)
    ctx, sk = keygen(ps, m1.galois_steps() + StaggeredMatrix.restagger_steps_for(96, ps.slots))
    x = rng.uniform(-1, 1, 96)
    (y,) = m1(ctx, tensor.encrypt(ctx, x, m1.input_layouts()[0]))
    (z,) = m2(ctx, StaggeredMatrix.restagger(ctx, y))
    assert ctx.level(z) == ctx.top_level - 3
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, z), w2 @ (w1 @ x), atol=TOL)
