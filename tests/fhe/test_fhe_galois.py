"""Rotation-key policies (p3eft.fhe.galois): which keys the data owner makes, and which rotations
they allow. The claim checked against SEAL itself: ``can_rotate`` says yes exactly when SEAL's
``rotate_vector`` succeeds, and a rotation composed from power-of-two keys gives the rotated vector."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from p3eft.fhe import galois, ops, tensor
from p3eft.fhe.context import LevelError, keygen
from p3eft.fhe.linalg import StaggeredMatrix
from p3eft.fhe.params import get_param_set

PS = get_param_set("N8192")
SLOTS = PS.slots


def test_naf_terms_are_the_non_adjacent_form():
    for v in range(-3000, 3001):
        terms = galois.naf_terms(v)
        assert sum(terms) == v
        bits = sorted(abs(t).bit_length() - 1 for t in terms)
        assert all(abs(t) == 1 << (abs(t).bit_length() - 1) for t in terms)  # powers of two
        assert all(b - a >= 2 for a, b in zip(bits, bits[1:], strict=False))  # no two adjacent
    assert galois.naf_terms(7) == [-1, 8] and galois.naf_terms(-7) == [1, -8] and galois.naf_terms(0) == []


def test_signed_steps_stay_within_half_the_slots():
    for s in (1, SLOTS // 2, SLOTS // 2 + 1, SLOTS - 1, -1, -SLOTS // 2, 3 * SLOTS + 5):
        t = galois.signed_step(s, SLOTS)
        assert -SLOTS // 2 < t <= SLOTS // 2 and (t - s) % SLOTS == 0


def test_pow2_keys_are_few_and_cover_every_step():
    steps = list(range(1, 200)) + [SLOTS - k for k in range(1, 60)] + [SLOTS // 2, 1000, 3000]
    exact = galois.rotation_key_steps(steps, SLOTS, "exact")
    pow2 = galois.rotation_key_steps(steps, SLOTS, "pow2")
    assert exact == sorted(set(steps))
    assert len(pow2) <= 2 * (SLOTS.bit_length() - 1) and len(pow2) < len(exact) / 10
    assert all(galois.can_rotate(s, set(pow2), SLOTS) for s in steps)
    assert all(galois.can_rotate(s, set(exact), SLOTS) for s in steps)
    assert not galois.can_rotate(5, {1, 2}, SLOTS)  # 5 = 4 + 1: no key for 4
    with pytest.raises(ValueError, match="rotation key mode"):
        galois.rotation_key_steps(steps, SLOTS, "all")


SHAPE = (256, 256)  # its product rotates by 3 and 12 (baby and giant steps), not powers of two


@pytest.fixture(scope="module")
def pow2_keys():
    """N=8192 keys made with the pow2 policy for a 256x256 product's rotations."""
    steps = StaggeredMatrix(np.zeros(SHAPE), SLOTS).galois_steps()
    return keygen(PS, galois.rotation_key_steps(steps, SLOTS, "pow2"))


@pytest.fixture(scope="module")
def gappy_keys():
    """Keys for every signed power of two but 4 and -4: the steps whose NAF uses +-4 cannot be made."""
    powers = {(sign << j) % SLOTS for j in range(SLOTS.bit_length() - 1) for sign in (1, -1)}
    return keygen(PS, sorted(powers - {4, SLOTS - 4}))


def _one_seal_object(ctx, sk):
    """SEAL's own GaloisKeys object for the context's steps, made from the same secret key: the
    reference for which rotations SEAL itself can compose."""
    kg = sealapi.KeyGenerator(ctx.seal, sk.key)
    gk = sealapi.GaloisKeys()
    kg.create_galois_keys(
        ctx.seal.key_context_data().galois_tool().get_elts_from_steps(list(ctx.galois_steps)), gk
    )
    return gk


def test_can_rotate_says_yes_exactly_when_seal_can(gappy_keys):
    """Our composition (one key object per step) against SEAL's (one object for all): ``can_rotate``
    says yes exactly when SEAL's ``rotate_vector`` can make the step, and then the rotation is right."""
    ctx, sk = gappy_keys
    seal_keys = _one_seal_object(ctx, sk)
    x = np.random.default_rng(3).uniform(-1, 1, SLOTS)
    ct = ctx.encrypt_slots(x, None)
    steps = sorted({*np.random.default_rng(7).integers(1, SLOTS, 40).tolist(), 3, 5, 9, 11, 2047, SLOTS - 9})
    yes = no = 0
    for s in steps:
        scratch = ctx.encrypt_slots(x, None).seal  # SEAL may leave it half rotated
        if ctx.can_rotate(s):
            yes += 1
            y = sk.decrypt_slots(ctx, ops.rotate(ctx, ct, s))
            np.testing.assert_allclose(y, np.roll(x, -s), atol=1e-5)
            ctx.evaluator.rotate_vector(ct.seal, galois.signed_step(s, SLOTS), seal_keys, scratch)
        else:
            no += 1
            with pytest.raises(LevelError, match="no Galois key"):
                ops.rotate(ctx, ct, s)
            with pytest.raises(ValueError):  # and SEAL itself cannot do it either
                ctx.evaluator.rotate_vector(ct.seal, galois.signed_step(s, SLOTS), seal_keys, scratch)
    assert yes >= 5 and no >= 2  # 11 = 16 - 4 - 1 and 5 = 4 + 1 at least: both cases exercised


def test_a_product_with_pow2_keys_equals_numpy(pow2_keys):
    ctx, sk = pow2_keys
    rng = np.random.default_rng(11)
    weight = rng.normal(size=SHAPE) / np.sqrt(SHAPE[1])
    x = rng.uniform(-1, 1, SHAPE[1])
    mat = StaggeredMatrix(weight, SLOTS)
    xs = [tensor.encrypt(ctx, b, lay) for b, lay in zip(mat.split_input(x), mat.input_layouts(), strict=True)]
    y = np.concatenate([tensor.decrypt(sk, ctx, c) for c in mat(ctx, xs)])
    np.testing.assert_allclose(y, weight @ x, atol=1e-4)
    needed = set(mat.galois_steps())
    assert {3, 12} & needed and not {3, 12} & set(ctx.galois_steps)  # those two were composed


def test_released_galois_keys_still_serialise_and_no_longer_rotate():
    """A data owner drops its Galois key object after the upload: the bytes it sends are unchanged, a
    context rebuilt from them rotates, and the releasing context refuses to."""
    ctx, sk = keygen(PS, [1, 4, SLOTS - 1])  # 3 = 4 - 1, composed
    before = ctx.to_payload()
    ctx.release_galois_keys()
    assert ctx.to_payload() == before
    x = np.arange(SLOTS) / SLOTS
    ct = tensor.encrypt(ctx, x)
    with pytest.raises(LevelError, match="no Galois key"):
        ops.rotate(ctx, ct, 1)
    other = type(ctx).from_payload(before)
    y = sk.decrypt_slots(
        other, ops.rotate(other, other.ciphertext_from_bytes(ctx.ciphertext_to_bytes(ct)), 3)
    )
    np.testing.assert_allclose(y, np.roll(x, -3), atol=1e-5)
