"""Exact residue arithmetic (p3eft.fhe.rns) against Python ints, edge values included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p3eft.fhe import rawpoly, rns

# the refresh's primes: 50-, 40- and 60-bit NTT primes of the named chains, and a 61-bit one
PRIMES = [1125899906826241, 1099511480321, 1099511922689, 1152921504606748673, 2305843009213554689]


def _ints(a: np.ndarray) -> list[int]:
    return [int(v) for v in a]


@pytest.mark.parametrize("q", PRIMES)
def test_mul_const_mod_is_exact_on_random_and_extreme_words(q, rng):
    a = rng.integers(0, 2**64, 4000, dtype=np.uint64)
    a[:4] = [0, 1, 2**64 - 1, q - 1]
    for b in (0, 1, q - 1, q // 2, int(rng.integers(0, q))):
        got = rns.mul_const_mod(a, b, q)
        assert _ints(got) == [int(x) * b % q for x in a]


def test_mul_const_mod_refuses_what_it_cannot_do_exactly():
    with pytest.raises(ValueError):
        rns.mul_const_mod(np.zeros(2, dtype=np.uint64), 5, 2**62 + 1)
    with pytest.raises(ValueError):
        rns.mul_const_mod(np.zeros(2, dtype=np.uint64), 7, 7)


@pytest.mark.parametrize("width_bits", [1, 40, 63, 64, 65, 101, 128])
def test_uniform_limb_mask_residues_and_range(width_bits):
    width = 1 << width_bits
    mask = rns.LimbPoly.uniform(width, 3000)
    vals = mask.to_ints()
    assert all(-width <= int(v) < width for v in vals)
    assert min(vals) < -width // 2 and max(vals) >= width // 2  # spread over the whole range
    primes = PRIMES[:3]
    np.testing.assert_array_equal(mask.residues(primes), rawpoly.residues(vals, primes))
    np.testing.assert_array_equal(mask.residues(primes, negate=True), rawpoly.residues(-vals, primes))


def test_uniform_limb_mask_has_fair_top_and_bottom_bits():
    from scipy import stats

    width = 1 << 101
    u = rns.LimbPoly.uniform(width, 20000).to_ints() + width
    for shift in (0, 63, 64, 101):  # bits at and around the limb boundary, and the top bit
        bits = np.array([(int(v) >> shift) & 1 for v in u])
        assert stats.binomtest(int(bits.sum()), bits.size).pvalue > 1e-6


def test_limb_mask_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        rns.LimbPoly.uniform(3 << 40, 4)


def test_from_ints_round_trip(rng):
    vals = np.array([0, 1, -1, 2**100, -(2**100) + 3, 123456789123456789123456789], dtype=object)
    poly = rns.LimbPoly.from_ints(vals)
    assert list(poly.to_ints()) == list(vals)
    np.testing.assert_array_equal(poly.residues(PRIMES), rawpoly.residues(vals, PRIMES))


def test_extend_centred_matches_python_crt(rng):
    src, dst = PRIMES[1:4], PRIMES[:5]
    big_q = math.prod(src)
    lim = big_q // 2 - big_q // 2**19  # up to the edge of the exact range
    vals = np.array([int(v) for v in rng.integers(-(2**62), 2**62, 2000)], dtype=object)
    vals = vals * (lim // 2**62)  # spread over the whole exact range
    vals[:4] = [0, -1, lim, -lim]
    res = rawpoly.residues(vals, src)
    np.testing.assert_array_equal(rns.extend_centred(res, src, dst), rawpoly.residues(vals, dst))


def test_extend_centred_refuses_values_beyond_its_exact_range():
    src = PRIMES[1:3]
    big_q = math.prod(src)
    vals = np.array([big_q // 2 - 5], dtype=object)  # centred, but within 2^-20 Q of Q/2
    with pytest.raises(ValueError, match="Q/2"):
        rns.extend_centred(rawpoly.residues(vals, src), src, PRIMES[:1])
