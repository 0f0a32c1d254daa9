"""The FHE key holder as a role object, and a refresher that reaches it through a ``Channel``.

Everything crossing the boundary is ``bytes`` (checked envelopes from :mod:`p3eft.fhe.serial`) or a
dict of them, so the same objects run in process (``InProcessChannel``) or over the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from p3eft.channel import Channel, remote
from p3eft.errors import SecurityError
from p3eft.fhe.context import Ciphertext, CkksContext, SecretKey, keygen
from p3eft.fhe.params import ParamSet
from p3eft.fhe.refresh import DEFAULT_LAMBDA, RefreshMasker, min_refresh_level, refresh_respond_bytes


class KeyHolder:
    """Data owner's FHE role: owns the secret key; hands out public keys; answers refresh requests.

    It never returns a decryption to the caller: :meth:`fhe_refresh` returns a fresh *encryption* of
    the masked slots it decrypted.
    """

    def __init__(self, params: ParamSet, galois_steps: list[int] | tuple[int, ...] = ()) -> None:
        self.ctx, self._sk = keygen(params, galois_steps)

    @property
    def secret_key(self) -> SecretKey:
        """Local access for the owner's own decryption (never exposed as a remote method)."""
        return self._sk

    @remote
    def fhe_public_keys(self) -> dict[str, bytes]:
        return self.ctx.to_payload()

    @remote
    def fhe_refresh(self, ciphertext: bytes) -> bytes:
        return refresh_respond_bytes(self.ctx, self._sk, ciphertext)


@dataclass
class RemoteRefresher:
    """Evaluator-side refresher: mask locally, let the key holder re-encrypt remotely, unmask."""

    ctx: CkksContext
    channel: Channel
    bound: float
    lam: int = DEFAULT_LAMBDA
    method: str = "fhe_refresh"
    calls: int = 0

    @property
    def min_level(self) -> int:
        return min_refresh_level(self.ctx, self.bound, self.lam)

    def __call__(self, ct: Ciphertext) -> Ciphertext:
        masker = RefreshMasker(self.ctx, self.bound, self.lam)
        masked = masker.mask(ct)
        answer = self.channel.call(self.method, ciphertext=self.ctx.ciphertext_to_bytes(masked))
        if not isinstance(answer, bytes):
            raise SecurityError("refresh answer is not a ciphertext")
        fresh = self.ctx.ciphertext_from_bytes(answer)
        if self.ctx.level(fresh) != self.ctx.top_level:
            raise SecurityError("refresh answer is not at the top level")
        self.calls += 1
        return masker.unmask(fresh)
