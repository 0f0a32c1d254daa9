"""Client-aided refresh: bring a ciphertext back to the top level without bootstrapping.

The two-party form of the collective refresh of multiparty CKKS (Mouchet et al., "Multiparty
homomorphic encryption from ring-learning-with-errors", PoPETs 2021): the mask is an *integer
polynomial in the coefficient domain* of the plaintext, so no floating point touches the masked value.

1. The evaluator (model owner) holds a ciphertext of the plaintext polynomial p = m * scale + e at a
   level l, and drops it to the lowest level whose modulus holds p + r (:func:`min_refresh_level`;
   exact, and the smallest request to send). It re-randomises it (adds a fresh public-key encryption
   of zero, :func:`p3eft.fhe.ops.rerandomise`), so that the second polynomial is no longer a function
   of the computation the key holder could redo from its own ciphertexts. It draws r, each of the N
   coefficients uniform on the integers of [-W, W) with W = 2^(lambda + ceil(log2 P)),
   P = (B + 1) * scale, and adds the trivial ciphertext (r, 0): :meth:`RefreshMasker.mask`.
2. The key holder (data owner) decrypts to the integer polynomial p + r (centred modulo q_0...q_l),
   lifts those integers to every prime of the top level and encrypts them there with SEAL's seeded
   symmetric encryption (the second polynomial travels as its PRNG seed, so the answer is half a
   ciphertext): :func:`refresh_answer`. It never sees p alone.
3. The evaluator subtracts r at the top level: :meth:`RefreshMasker.unmask`. The result encrypts
   p plus fresh encryption noise, at the scale the input had.

What P covers (ours): a slot vector with |slot| <= B encodes to coefficients of size <= B * scale
(each coefficient is an average of the slot values times roots of unity), and evaluator noise with
coefficients below one scale unit (a slot error below 1, beyond which the result is useless anyway).

Guarantee (per refresh): the request's second polynomial is pseudorandom (RLWE, after the
re-randomisation); and for two plaintext polynomials whose coefficients are bounded by P (the fresh
encryption noise of the re-randomisation included), the key holder's views p + r and p' + r differ in statistical distance by at most
|p_i - p'_i| / (2W) <= 2^-lambda per coefficient, so at most N * 2^-lambda for the whole polynomial
(2^-27 for N = 8192 and lambda = 40). Slots beyond B break the premise: their coefficients can
exceed P and the bound no longer holds (see :func:`p3eft.fhe.nonlinear.range_flags`).

Precision: only integers are added and subtracted, so the refresh adds nothing but the noise of a
fresh encryption, whatever lambda. The level at which one refreshes needs
log2(q_0...q_l) >= lambda + ceil(log2 P) + 2 + 4 bits of margin: :func:`min_refresh_level`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import ops, rawpoly, rns
from p3eft.fhe.context import Ciphertext, CkksContext, LevelError, SecretKey, chain_by_level
from p3eft.fhe.params import ParamSet

DEFAULT_LAMBDA = 40
MIN_LAMBDA = 30
_MARGIN_BITS = 4


def coefficient_bound(bound: float, scale: float) -> int:
    """P: the coefficient bound the mask must cover, (B + 1) * scale (message plus evaluator noise)."""
    if not (math.isfinite(bound) and bound > 0):
        raise ProtocolError(f"refresh bound must be a positive number, got {bound!r}")
    return math.ceil((bound + 1.0) * scale)


def mask_bits(bound: float, scale: float, lam: int = DEFAULT_LAMBDA) -> int:
    """k with W = 2^k = 2^(lambda + ceil(log2 P)) >= 2^lambda * P."""
    return lam + math.ceil(math.log2(coefficient_bound(bound, scale)))


def min_refresh_level(ctx: CkksContext, bound: float, lam: int = DEFAULT_LAMBDA) -> int:
    """Lowest level whose modulus Q holds p + r (|p + r| < 2W) with a sign bit and 4 bits of margin:
    Q >= 2^need with the level's actual primes (a b-bit prime is below 2^b), so |p + r| < Q/32."""
    primes = [rawpoly.primes_at(ctx, lvl) for lvl in range(ctx.top_level + 1)]
    return _lowest_level_holding(primes, ctx.params, bound, lam)


def refresh_floor(params: ParamSet, bound: float, lam: int = DEFAULT_LAMBDA) -> int:
    """:func:`min_refresh_level` of a parameter set before any key exists (SEAL's primes, no keys):
    what a model owner checks its model's depth against when it is configured."""
    chain = chain_by_level(CkksContext.seal_context(params))
    primes = [[m.value() for m in data.parms().coeff_modulus()] for data in chain]
    return _lowest_level_holding(primes, params, bound, lam)


def _lowest_level_holding(primes: list[list[int]], params: ParamSet, bound: float, lam: int) -> int:
    need = mask_bits(bound, params.scale * (1 + 2**-20), lam) + 2 + _MARGIN_BITS
    for lvl, qs in enumerate(primes):
        if math.prod(qs) >= 1 << need:
            return lvl
    raise LevelError(f"no level of {params.name} has the {need} bits a lambda={lam} refresh needs")


def uniform_integers(width: int, count: int) -> np.ndarray:
    """``count`` integers uniform on [-width, width) from the OS CSPRNG (object array of Python ints).

    Rejection sampling on (2 width - 1).bit_length() random bits: exact, and never rejects when the
    width is a power of two (the production case)."""
    span = 2 * width
    nbits = (span - 1).bit_length()
    words = -(-nbits // 64)
    out = np.empty(count, dtype=object)
    todo = np.arange(count)
    while todo.size:
        raw = np.frombuffer(os.urandom(8 * words * todo.size), dtype=np.uint64).reshape(todo.size, words)
        vals = np.zeros(todo.size, dtype=object)
        for w in range(words):
            vals = vals * (1 << 64) + raw[:, w].astype(object)
        vals = vals >> (64 * words - nbits)
        ok = vals < span
        out[todo[ok]] = vals[ok] - width
        todo = todo[~ok]
    return out


def draw_mask(width: int, count: int) -> rns.LimbPoly:
    """The refresh mask: ``count`` integers uniform on [-width, width), kept as 64-bit limbs.

    Production widths are powers of two (:meth:`RefreshMasker.mask_width`): exactly that many CSPRNG
    bits per coefficient. Any other width (tests' narrow negative controls) goes through
    :func:`uniform_integers`' rejection sampling."""
    if width >= 1 and width & (width - 1) == 0:
        return rns.LimbPoly.uniform(width, count)
    return rns.LimbPoly.from_ints(uniform_integers(width, count))


@dataclass
class RefreshMasker:
    """Evaluator side of one refresh: holds the integer mask between :meth:`mask` and :meth:`unmask`."""

    ctx: CkksContext
    bound: float
    lam: int = DEFAULT_LAMBDA
    _mask: rns.LimbPoly | None = None
    _scale: float = 0.0

    def __post_init__(self) -> None:
        if self.lam < MIN_LAMBDA:
            raise SecurityError(f"refresh mask lambda={self.lam} is below the minimum of {MIN_LAMBDA} bits")
        coefficient_bound(self.bound, self.ctx.params.scale)  # refuses a non-positive bound

    def mask_width(self, scale: float) -> int:
        """W: the mask is uniform on the integers of [-W, W)."""
        return 1 << mask_bits(self.bound, scale, self.lam)

    def mask(self, ct: Ciphertext) -> Ciphertext:
        self.ctx.check(ct)
        if self._mask is not None:
            raise SecurityError("this masker already holds a pending mask: one refresh per masker")
        lvl = self.ctx.level(ct)
        need = min_refresh_level(self.ctx, self.bound, self.lam)
        if lvl < need:
            raise LevelError(f"refresh with lambda={self.lam} needs level >= {need}, ciphertext is at {lvl}")
        # Send the request at the lowest level that holds p + r (ours): dropping primes is exact (the
        # centred p is the same integer modulo the smaller modulus) and keeps the scale, so the key
        # holder's view is unchanged, while the request, the mask addition and the key holder's
        # decryption shrink with the number of primes.
        ct = ops.drop_to(self.ctx, ct, need)
        # c1 is hidden by re-randomisation (computationally, RLWE), c0 by the mask (statistically).
        ct = ops.rerandomise(self.ctx, ct)
        self._scale = ct.seal.scale
        self._mask = draw_mask(self.mask_width(self._scale), self.ctx.params.poly_modulus_degree)
        res = self._mask.residues(rawpoly.primes_at(self.ctx, need))
        return Ciphertext(rawpoly.add_residue_poly(self.ctx, ct.seal, res), ct.context_id, ct.layout)

    def unmask(self, fresh: Ciphertext) -> Ciphertext:
        if self._mask is None:
            raise SecurityError("unmask called without a pending mask")
        self.ctx.check(fresh)
        top = self.ctx.top_level
        if self.ctx.level(fresh) != top:
            raise SecurityError("refresh answer is not at the top level")
        if fresh.seal.scale != self._scale:
            raise SecurityError("refresh answer has another scale than the masked ciphertext")
        res = self._mask.residues(rawpoly.primes_at(self.ctx, top), negate=True)
        out = rawpoly.add_residue_poly(self.ctx, fresh.seal, res)
        self._mask = None
        return Ciphertext(out, fresh.context_id, fresh.layout)


def key_holder_coefficients(ctx: CkksContext, sk: SecretKey, masked: Ciphertext) -> np.ndarray:
    """What the key holder learns from one refresh request: the centred integer coefficients of the
    decrypted, masked plaintext polynomial (object array of Python ints)."""
    return rawpoly.plaintext_coefficients(ctx, sk.decrypt_plaintext(ctx, masked), ctx.level(masked))


def refresh_answer(
    ctx: CkksContext, sk: SecretKey, masked: Ciphertext, with_view: bool = False
) -> tuple[bytes, np.ndarray | None]:
    """Key holder's side: decrypt to the integer polynomial and encrypt it again at the top level.

    Returns the answer's bytes (a seeded symmetric encryption: SEAL stores the second polynomial as
    its seed, so the answer is about half a ciphertext; the receiver's load expands it) and, with
    ``with_view``, the key holder's view (the centred integer coefficients it decrypted), for a key
    holder that keeps an audit record of what it saw.

    The polynomial stays in residue form: it is lifted from the request's primes to the top level's by
    an exact base extension (:func:`p3eft.fhe.rns.extend_centred`), which needs |p + r| below about
    Q/2 of the request's level. A request that :meth:`RefreshMasker.mask` made is below Q/32
    (:func:`min_refresh_level`); any other is refused."""
    level = ctx.level(masked)
    primes = rawpoly.primes_at(ctx, level)
    res = rawpoly.plaintext_residues(ctx, sk.decrypt_plaintext(ctx, masked), level)
    try:
        top = rns.extend_centred(res, primes, rawpoly.primes_at(ctx, ctx.top_level))
    except ValueError as err:
        raise ProtocolError(f"refresh request out of range: {err}") from err
    pt = rawpoly.ntt_plaintext_from_residues(ctx, ctx.top_level, top, masked.seal.scale)
    view = rawpoly.centred(res, primes) if with_view else None
    return sk.encrypt_plaintext_seeded_bytes(ctx, pt, masked.layout), view


def refresh_respond(ctx: CkksContext, sk: SecretKey, masked: Ciphertext) -> Ciphertext:
    """:func:`refresh_answer` as a ciphertext (in-process use: tests, benchmarks, the local refresher)."""
    return ctx.ciphertext_from_bytes(refresh_answer(ctx, sk, masked)[0])


def normalised_view(coeffs: np.ndarray, bound: float, scale: float, lam: int = DEFAULT_LAMBDA) -> np.ndarray:
    """A view divided by the mask width W (float64): uniform on [-1, 1) whatever the message, for
    plaintext coefficients within P = (bound + 1) * scale (what an audit tests)."""
    width = float(2 ** mask_bits(bound, scale, lam))
    return np.array([float(c) for c in coeffs]) / width


def refresh_respond_bytes(ctx: CkksContext, sk: SecretKey, masked: bytes) -> bytes:
    """Same, on checked bytes: what the key holder's ``@remote`` method does."""
    return refresh_answer(ctx, sk, ctx.ciphertext_from_bytes(masked))[0]


def refresh_local(
    ctx: CkksContext, sk: SecretKey, ct: Ciphertext, bound: float, lam: int = DEFAULT_LAMBDA
) -> Ciphertext:
    """The full round trip in one process (tests, benchmarks): mask, respond, unmask."""
    masker = RefreshMasker(ctx, bound, lam)
    return masker.unmask(refresh_respond(ctx, sk, masker.mask(ct)))


def key_holder_view(ctx: CkksContext, sk: SecretKey, masked: Ciphertext) -> np.ndarray:
    """The key holder's view decoded to slots (real parts): what a slot-domain distinguisher reads."""
    return sk.decrypt_slots(ctx, masked)


@dataclass
class LocalRefresher:
    """A :class:`~p3eft.fhe.nonlinear.Refresher` whose key holder lives in this process (tests, demos).

    The networked version sends :meth:`RefreshMasker.mask`'s bytes to the data owner's remote method
    that runs :func:`refresh_respond_bytes`; the arithmetic is the same.
    """

    ctx: CkksContext
    sk: SecretKey
    bound: float
    lam: int = DEFAULT_LAMBDA
    calls: int = 0

    @property
    def min_level(self) -> int:
        return min_refresh_level(self.ctx, self.bound, self.lam)

    def __call__(self, ct: Ciphertext) -> Ciphertext:
        self.calls += 1
        return refresh_local(self.ctx, self.sk, ct, self.bound, self.lam)
