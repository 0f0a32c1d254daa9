"""Exact residue arithmetic on NumPy ``uint64`` vectors, for the refresh's integer polynomials (ours).

The refresh (:mod:`p3eft.fhe.refresh`) handles integers of ~100 bits per coefficient: the mask, and
the key holder's decrypted polynomial lifted from the refresh level's primes to the top level's.
As NumPy object arrays of Python ints these cost ~130 ns per coefficient and prime, most of a
refresh's CPU. Here they stay in residue (RNS) form, with three exact tools:

* :func:`mul_const_mod`: a vector times a constant modulo a prime q < 2^62, with Shoup's
  precomputed quotient (b' = floor(b 2^64 / q)): the product's quotient is the high word of a b',
  which NumPy lacks, so it is assembled from 32-bit halves. Exact for any 64-bit a (the remainder
  before the last correction lies in [0, 2q)).
* :class:`LimbPoly`: an integer polynomial u - offset with u held as little-endian 64-bit limbs, so
  a uniform mask is drawn straight from CSPRNG bytes and reduced modulo each prime limb by limb.
* :func:`extend_centred`: the centred integers of residues modulo q_0..q_l, reduced modulo other
  primes (fast base extension: x = sum_i z_i Q/q_i - v Q, with v found in floating point). Exact
  unless |x| is within 2^-20 Q of Q/2, where it refuses; the refresh's values are below Q/32.

Everything is checked against Python-int arithmetic in ``tests/fhe/test_fhe_rns.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
MAX_PRIME_BITS = 62  # Shoup's bound: 2q must fit in a word
_EXTENSION_MARGIN = 2.0**-20  # how far from Q/2 a centred value must stay for the fast base extension


def _mulhi(a: np.ndarray, b: int) -> np.ndarray:
    """The high 64 bits of a * b (a: uint64 vector, b: a 64-bit constant), from 32-bit halves."""
    a0, a1 = a & _LOW32, a >> _SHIFT32
    b0, b1 = np.uint64(b & 0xFFFFFFFF), np.uint64(b >> 32)
    lo, mid1, mid2 = a0 * b0, a1 * b0, a0 * b1
    carry = ((lo >> _SHIFT32) + (mid1 & _LOW32) + (mid2 & _LOW32)) >> _SHIFT32
    return a1 * b1 + (mid1 >> _SHIFT32) + (mid2 >> _SHIFT32) + carry


def mul_const_mod(a: np.ndarray, b: int, q: int) -> np.ndarray:
    """(a * b) mod q for a uint64 vector ``a`` (any 64-bit values) and a constant 0 <= b < q < 2^62."""
    if not (1 < q < 1 << MAX_PRIME_BITS and 0 <= b < q):
        raise ValueError(f"need 0 <= b < q < 2^{MAX_PRIME_BITS}")
    b_shoup = (b << 64) // q
    a = np.asarray(a, dtype=np.uint64)
    r = a * np.uint64(b) - _mulhi(a, b_shoup) * np.uint64(q)  # wraps modulo 2^64; true value in [0, 2q)
    return np.where(r >= np.uint64(q), r - np.uint64(q), r)


def add_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a + b) mod q for residues a, b < q < 2^62 (no overflow: a + b < 2^63)."""
    s = a + b
    return np.where(s >= np.uint64(q), s - np.uint64(q), s)


def neg_mod(a: np.ndarray, q: int) -> np.ndarray:
    """(-a) mod q for residues a < q."""
    return np.where(a == 0, a, np.uint64(q) - a)


@dataclass(frozen=True)
class LimbPoly:
    """Integers u - offset per coefficient, u >= 0 as little-endian 64-bit limbs (shape limbs x N)."""

    limbs: np.ndarray
    offset: int

    @classmethod
    def uniform(cls, width: int, count: int) -> LimbPoly:
        """``count`` integers uniform on [-width, width), ``width`` a power of two, from the OS CSPRNG:
        u takes exactly log2(2 width) uniform bits (no rejection, no bias)."""
        if width < 1 or width & (width - 1):
            raise ValueError(f"a limb mask needs a power-of-two width, got {width}")
        nbits = (2 * width).bit_length() - 1
        words = -(-nbits // 64)
        limbs = np.frombuffer(os.urandom(8 * words * count), dtype=np.uint64).reshape(words, count).copy()
        top = nbits - 64 * (words - 1)
        if top < 64:
            limbs[-1] &= np.uint64((1 << top) - 1)
        return cls(limbs, width)

    @classmethod
    def from_ints(cls, values: np.ndarray) -> LimbPoly:
        """From Python ints (object array, any sign): offset = the smallest power of two covering them."""
        vals = np.asarray(values, dtype=object)
        low = min(0, int(min(vals, default=0)))
        offset = 1 << max(0, (-low).bit_length())
        u = vals + offset
        words = max(1, -(-int(max(u, default=0)).bit_length() // 64))
        mask = (1 << 64) - 1
        limbs = np.stack([((u >> (64 * w)) & mask).astype(np.uint64) for w in range(words)])
        return cls(limbs, offset)

    def to_ints(self) -> np.ndarray:
        """The integers as Python ints (object array): tests and audits."""
        total = np.zeros(self.limbs.shape[1], dtype=object)
        for w in range(self.limbs.shape[0] - 1, -1, -1):
            total = total * (1 << 64) + self.limbs[w].astype(object)
        return total - self.offset

    def residues(self, primes: list[int], negate: bool = False) -> np.ndarray:
        """Residues (primes x N, uint64) of the integers, or of their negatives."""
        out = []
        for q in primes:
            acc = np.zeros(self.limbs.shape[1], dtype=np.uint64)
            for w, limb in enumerate(self.limbs):
                acc = add_mod(acc, mul_const_mod(limb, pow(2, 64 * w, q), q), q)
            acc = add_mod(acc, np.full_like(acc, (-self.offset) % q), q)
            out.append(neg_mod(acc, q) if negate else acc)
        return np.stack(out)


def extend_centred(res: np.ndarray, from_primes: list[int], to_primes: list[int]) -> np.ndarray:
    """Residues modulo ``to_primes`` of the centred integers x in (-Q/2, Q/2] whose residues modulo
    ``from_primes`` (product Q) are ``res``; ValueError if some |x| > (1/2 - 2^-20) Q.

    x = sum_i z_i (Q/q_i) - v Q with z_i = res_i (Q/q_i)^-1 mod q_i and v = round(sum_i z_i / q_i).
    The float64 sum is off by less than 2^-48 (a few terms below 1, each rounded twice), so v is the
    right integer whenever sum_i z_i / q_i = v + x/Q stays 2^-20 away from a half-integer."""
    big_q = math.prod(from_primes)
    z = [mul_const_mod(r, pow(big_q // q, -1, q), q) for r, q in zip(res, from_primes, strict=True)]
    s = np.zeros(res.shape[1], dtype=np.float64)
    for zi, q in zip(z, from_primes, strict=True):
        s += zi.astype(np.float64) / q
    v = np.rint(s)
    if np.any(np.abs(s - v) > 0.5 - _EXTENSION_MARGIN):
        raise ValueError("a coefficient is within 2^-20 Q of Q/2: no exact fast base extension")
    v_int = v.astype(np.uint64)  # 0 <= v <= len(from_primes)
    out = []
    for p in to_primes:
        acc = np.zeros(res.shape[1], dtype=np.uint64)
        for zi, q in zip(z, from_primes, strict=True):
            acc = add_mod(acc, mul_const_mod(zi, (big_q // q) % p, p), p)
        acc = add_mod(acc, neg_mod(mul_const_mod(v_int, big_q % p, p), p), p)
        out.append(acc)
    return np.stack(out)
