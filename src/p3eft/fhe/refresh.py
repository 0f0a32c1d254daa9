"""Client-aided refresh: restore a ciphertext to the top level without bootstrapping (DESIGN.md §2.1).

This is the refresh of multiparty CKKS (Mouchet et al., PoPETs 2021) in its two-party form, with the
mask in the *slots* (ours; the public encode/encrypt API suffices):

1. the evaluator (model owner) draws a mask r, uniform in [-2^lambda * B, 2^lambda * B] per slot
   where B bounds |message|, and sends ct + r (:meth:`RefreshMasker.mask`);
2. the key holder (data owner) decrypts, sees only m + r, and re-encrypts it fresh at the top level
   (:func:`refresh_respond`); it never sees m itself;
3. the evaluator subtracts r (:meth:`RefreshMasker.unmask`).

Hiding is statistical: for two messages m, m' with |m|, |m'| <= B, the per-slot views m + r and
m' + r differ in distribution by at most |m - m'| / (2^(lambda+1) * B) <= 2^-lambda. Cost in
precision: the key holder decodes values of size 2^lambda * B in doubles (53-bit mantissa), so the
refreshed value carries an absolute error of about 2^(lambda + log2 B - 53 + a few bits); we measure
it (:func:`measure_refresh_error`, reported in docs/fhe.md and by the tests). The level at which
one refreshes needs q_0...q_l > 2^(lambda+1) * B * scale: :func:`min_refresh_level` computes it.

Not hidden by the slot mask: the CKKS noise of the evaluator's computation, which sits below the
mask's rounding; a coefficient-domain mask with smudging noise would also cover it (future work).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from p3eft.errors import SecurityError
from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, LevelError, SecretKey

DEFAULT_LAMBDA = 30
_MARGIN_BITS = 4


def min_refresh_level(ctx: CkksContext, bound: float, lam: int = DEFAULT_LAMBDA) -> int:
    """Lowest level whose modulus exceeds 2^(lambda+1) * bound * scale with a few bits of margin."""
    need = lam + 1 + math.log2(max(bound, 1e-300)) + ctx.params.scale_bits + _MARGIN_BITS
    for lvl in range(ctx.top_level + 1):
        if ctx.params.level_bits(lvl) >= need:
            return lvl
    raise LevelError(f"no level of {ctx.params.name} has the {need:.0f} bits a lambda={lam} refresh needs")


@dataclass
class RefreshMasker:
    """Evaluator side of one refresh: holds the mask between :meth:`mask` and :meth:`unmask`."""

    ctx: CkksContext
    bound: float
    lam: int = DEFAULT_LAMBDA
    _mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.lam < 30:
            raise SecurityError(f"refresh mask lambda={self.lam} is below the minimum of 30 bits")

    def _draw(self) -> np.ndarray:
        # uniform in [-2^lam B, 2^lam B] from the OS CSPRNG, 53 random bits per slot
        raw = np.frombuffer(os.urandom(8 * self.ctx.slots), dtype=np.uint64) >> np.uint64(11)
        unit = raw.astype(np.float64) / float(1 << 53)
        width = 2.0**self.lam * self.bound
        return (2.0 * unit - 1.0) * width

    def mask(self, ct: Ciphertext) -> Ciphertext:
        self.ctx.check(ct)
        lvl = self.ctx.level(ct)
        need = min_refresh_level(self.ctx, self.bound, self.lam)
        if lvl < need:
            raise LevelError(f"refresh with lambda={self.lam} needs level >= {need}, ciphertext is at {lvl}")
        self._mask = self._draw()
        return ops.add_plain(self.ctx, ct, self._mask)

    def unmask(self, fresh: Ciphertext) -> Ciphertext:
        if self._mask is None:
            raise SecurityError("unmask called without a pending mask")
        self.ctx.check(fresh)
        out = ops.add_plain(self.ctx, fresh, -self._mask)
        self._mask = None
        return out


def refresh_respond(ctx: CkksContext, sk: SecretKey, masked: Ciphertext) -> Ciphertext:
    """Key holder's side: decrypt the masked ciphertext and re-encrypt the same slots at the top level."""
    slots = sk.decrypt_slots(ctx, masked)
    return ctx.encrypt_slots(slots, masked.layout)


def refresh_respond_bytes(ctx: CkksContext, sk: SecretKey, masked: bytes) -> bytes:
    """Same, on checked bytes: what the data owner's ``@remote`` method does."""
    return ctx.ciphertext_to_bytes(refresh_respond(ctx, sk, ctx.ciphertext_from_bytes(masked)))


def refresh_local(
    ctx: CkksContext, sk: SecretKey, ct: Ciphertext, bound: float, lam: int = DEFAULT_LAMBDA
) -> Ciphertext:
    """The full round trip in one process (tests, benchmarks): mask, respond, unmask."""
    masker = RefreshMasker(ctx, bound, lam)
    return masker.unmask(refresh_respond(ctx, sk, masker.mask(ct)))


def key_holder_view(ctx: CkksContext, sk: SecretKey, masked: Ciphertext) -> np.ndarray:
    """What the key holder learns from one refresh request: the decrypted, masked slots."""
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
