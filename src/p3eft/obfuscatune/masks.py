"""Secret masks of the enclave: random invertible matrices drawn from a CSPRNG.

A mask ``R`` (n x n) acts on the last dimension of row vectors, ``x -> x @ R``. The enclave needs four
actions: ``x R`` (mask an activation), ``y R^-1`` (unmask an output), ``g R^T`` and ``g R^-T`` (the
same two for gradients, which flow through the transposed maps). Families:

* ``orthogonal`` -- Haar-random orthogonal (QR of a Gaussian with the sign fix), condition number 1,
  inverse = transpose. The paper's choice and our default.
* ``cond:K`` -- the paper's Appendix-B family ``R = Q_A S Q_B^T`` with condition number K. The
  singular values are log-spaced in [K^-1/2, K^1/2] (ours: the paper fixes only the ratio); the
  inverse is taken from the factors, so only the conditioning (not a numeric inverse) costs accuracy.
* ``naive`` -- a plain Gaussian ``G / sqrt(n)`` with a numeric inverse (large, random condition number).
* ``kron[:F]`` (ours) -- ``P1 (R_1 (x) ... (x) R_k) P2``: a Kronecker product of small Haar factors of
  size <= F (default 16) between two random permutations. Still orthogonal (condition number 1),
  applied in O(n * sum f_i) instead of O(n^2). Gives up randomness: sum f_i(f_i-1)/2 continuous
  degrees of freedom plus two permutations instead of n(n-1)/2.
* ``blockperm[:B]`` (ours) -- ``P1 diag(R_1..R_m) P2``: independent Haar blocks of size B (default 32)
  between two random permutations; O(n * B). Gives up: (n/B) * B(B-1)/2 degrees of freedom, and an
  output coordinate mixes only B input coordinates.

Dense families on a width larger than the model width d (GPT-2's 3d-wide QKV and 4d-wide MLP
activations, SmolLM2's 1536-wide MLP) use independent diagonal blocks of the largest divisor of the
width that is <= d (ours), costing c*b^2 instead of (c*b)^2.

Randomness comes from ChaCha20 keyed per mask by BLAKE2b(session secret, mask label), so masks are
CSPRNG draws yet a session restored from its secret reproduces them exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from p3eft.errors import P3eftError

# --------------------------------------------------------------------------------------- CSPRNG


class CsprngStream:
    """A ChaCha20 keystream turned into uniforms, Gaussians and permutations (float64)."""

    def __init__(self, secret: bytes, label: str) -> None:
        key = hashlib.blake2b(label.encode(), key=secret[:64], digest_size=32, person=b"p3eft-mask").digest()
        self._enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()

    def _uint64(self, n: int) -> np.ndarray:
        return np.frombuffer(self._enc.update(b"\x00" * (8 * n)), dtype=np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """n uniforms in the open interval (0, 1), 53 random bits each."""
        return ((self._uint64(n) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def uniform32(self, n: int) -> torch.Tensor:
        """n float32 uniforms in the open interval (0, 1), 24 random bits each (half the keystream)."""
        words = np.frombuffer(self._enc.update(b"\x00" * (4 * n)), dtype=np.uint32)
        return (torch.from_numpy((words >> np.uint32(8)).astype(np.float32)) + 0.5) * 2.0**-24

    def normal(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Standard Gaussians by the Box-Muller transform.

        float64 (masks, mixing matrices): 53-bit uniforms, numpy's transcendentals, as always drawn.
        float32 (the per-call noise rows of float32 calls, the enclave's largest draw): 24-bit uniforms
        and torch's vectorised float32 transcendentals, measured 8x cheaper in CPU time for 4M draws;
        the tail is cut at sqrt(2 ln 2^25) = 5.9 sigma (probability 4e-9), below the noise's purpose."""
        n = math.prod(shape)
        m = (n + 1) // 2
        if dtype == torch.float32:
            u = self.uniform32(2 * m)
            r, theta = torch.sqrt(-2.0 * torch.log(u[:m])), (2 * math.pi) * u[m:]
            return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n].reshape(shape)
        if dtype != torch.float64:
            raise P3eftError(f"CSPRNG Gaussians come in float32 or float64, not {dtype}")
        u1, u2 = self.uniform(m), self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
        return torch.from_numpy(z.reshape(shape).copy())

    def permutation(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.argsort(self.uniform(n), kind="stable").copy())


@contextlib.contextmanager
def single_threaded():
    """Run LAPACK on one thread: for mask-sized matrices (up to a few thousand) threading gains little
    and, on a shared CPU, oversubscription made a 576 x 576 QR 18x slower (measured: 0.45 s vs 0.025 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def haar_orthogonal(stream: CsprngStream, n: int) -> torch.Tensor:
    """Haar-distributed orthogonal matrix: QR of a Gaussian, columns' signs fixed by diag(R)."""
    g = stream.normal(n, n)
    with single_threaded():
        q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


# --------------------------------------------------------------------------------------- masks


class Mask:
    """An invertible n x n matrix acting on the last dimension of row vectors."""

    n: int
    orthogonal: bool

    def right(self, x: torch.Tensor) -> torch.Tensor:  # x R
        raise NotImplementedError

    def right_inv(self, x: torch.Tensor) -> torch.Tensor:  # x R^-1
        raise NotImplementedError

    def right_t(self, x: torch.Tensor) -> torch.Tensor:  # x R^T
        raise NotImplementedError

    def right_inv_t(self, x: torch.Tensor) -> torch.Tensor:  # x R^-T
        raise NotImplementedError

    def macs_per_row(self) -> int:
        """Multiply-accumulates to mask one row vector (the enclave's cost)."""
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """The dense matrix R (tests, small n only)."""
        return self.right(torch.eye(self.n, dtype=self.dtype))

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this mask holds (for leak checks)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()[0].dtype


class DenseMask(Mask):
    def __init__(self, r: torch.Tensor, r_inv: torch.Tensor | None) -> None:
        self.r = r
        self.r_inv = r_inv  # None: orthogonal, inverse = transpose
        self.n = r.shape[0]
        self.orthogonal = r_inv is None

    def right(self, x):
        return x @ self.r

    def right_inv(self, x):
        return x @ (self.r.T if self.r_inv is None else self.r_inv)

    def right_t(self, x):
        return x @ self.r.T

    def right_inv_t(self, x):
        return x @ (self.r if self.r_inv is None else self.r_inv.T)

    def macs_per_row(self) -> int:
        return self.n * self.n

    def tensors(self):
        return [self.r] + ([] if self.r_inv is None else [self.r_inv])


class ChunkedMask(Mask):
    """Block-diagonal composition: chunk i of the last dimension is masked by ``masks[i]``."""

    def __init__(self, masks: list[Mask]) -> None:
        self.masks = masks
        self.sizes = [m.n for m in masks]
        self.n = sum(self.sizes)
        self.orthogonal = all(m.orthogonal for m in masks)

    def _each(self, x, op):
        parts = torch.split(x, self.sizes, dim=-1)
        return torch.cat([getattr(m, op)(p) for m, p in zip(self.masks, parts, strict=True)], dim=-1)

    def right(self, x):
        return self._each(x, "right")

    def right_inv(self, x):
        return self._each(x, "right_inv")

    def right_t(self, x):
        return self._each(x, "right_t")

    def right_inv_t(self, x):
        return self._each(x, "right_inv_t")

    def macs_per_row(self) -> int:
        return sum(m.macs_per_row() for m in self.masks)

    def tensors(self):
        return [t for m in self.masks for t in m.tensors()]


def _inverse_perm(p: torch.Tensor) -> torch.Tensor:
    return torch.argsort(p)


class _PermutedOrthogonal(Mask):
    """``R = P1 K P2`` with orthogonal K and permutations P1, P2 (``x P`` means ``x[..., p]``)."""

    def __init__(self, n: int, p1: torch.Tensor, p2: torch.Tensor) -> None:
        self.n = n
        self.p1, self.p2 = p1, p2
        self.p1_inv, self.p2_inv = _inverse_perm(p1), _inverse_perm(p2)
        self.orthogonal = True

    def _k(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, x, first, last, transpose):
        # permute on a 2-D view: torch's index_select is ~5x faster on 2-D than on 3-D inputs (measured)
        y = x.reshape(-1, self.n).index_select(1, first)
        return self._k(y, transpose).index_select(1, last).reshape(x.shape)

    def right(self, x):
        return self._apply(x, self.p1, self.p2, False)

    def right_inv(self, x):  # R^-1 = P2^T K^T P1^T
        return self._apply(x, self.p2_inv, self.p1_inv, True)

    right_inv_t = right  # orthogonal: R^-T = R

    right_t = right_inv


class KronMask(_PermutedOrthogonal):
    """Kronecker product of small Haar factors between two random permutations."""

    def __init__(self, factors: list[torch.Tensor], p1: torch.Tensor, p2: torch.Tensor) -> None:
        super().__init__(math.prod(f.shape[0] for f in factors), p1, p2)
        self.factors = factors
        self.sizes = [f.shape[0] for f in factors]

    def _k(self, x, transpose):
        # one batched matmul per factor on a (pre, f, post) view: no axis moves, no extra copies
        lead = x.shape[:-1]
        y = x.reshape(-1, self.n)
        rows = y.shape[0]
        for i, f in enumerate(self.factors):
            fi = self.sizes[i]
            post = math.prod(self.sizes[i + 1 :])
            m = f.T if transpose else f
            if post == 1:
                y = y.reshape(-1, fi) @ m
            else:
                y = m.T @ y.reshape(rows * math.prod(self.sizes[:i]), fi, post)
        return y.reshape(*lead, self.n)

    def macs_per_row(self) -> int:
        return self.n * sum(self.sizes)

    def tensors(self):
        return [*self.factors, self.p1, self.p2]


class BlockPermMask(_PermutedOrthogonal):
    """Independent Haar blocks on the diagonal between two random permutations."""

    def __init__(self, blocks: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> None:
        super().__init__(blocks.shape[0] * blocks.shape[1], p1, p2)
        self.blocks = blocks  # (m, b, b)

    def _k(self, x, transpose):
        m, b, _ = self.blocks.shape
        y = x.reshape(-1, m, b).transpose(0, 1)  # (m, rows, b): one bmm over the blocks
        w = self.blocks.transpose(-1, -2) if transpose else self.blocks
        return torch.bmm(y, w).transpose(0, 1).reshape(*x.shape[:-1], self.n)

    def macs_per_row(self) -> int:
        return self.n * self.blocks.shape[1]

    def tensors(self):
        return [self.blocks, self.p1, self.p2]


# --------------------------------------------------------------------------------------- families


def kron_factors(n: int, max_factor: int) -> list[int]:
    """Split n into as few factors <= max_factor as possible, near-equal (a prime > max stays whole)."""
    primes = []
    m = n
    p = 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    k = max(1, math.ceil(math.log(n) / math.log(max_factor))) if n > max_factor else 1
    while True:  # greedy: largest primes first into the currently smallest bin
        bins = [1] * k
        for q in sorted(primes, reverse=True):
            i = min(range(k), key=lambda j: bins[j])
            bins[i] *= q
        if max(bins) <= max_factor or k >= len(primes):
            return sorted(b for b in bins if b > 1) or [n]
        k += 1


@dataclass(frozen=True)
class MaskFamily:
    """A parsed ``--masks`` value: how to draw a mask of width n and what applying it costs."""

    kind: str  # orthogonal | cond | naive | kron | blockperm
    param: float = 0.0
    chunk: int | None = None  # dense families: block width on multiples of the model width

    @property
    def spec(self) -> str:
        if self.kind == "cond":
            return f"cond:{self.param:g}"
        if self.kind in ("kron", "blockperm"):
            return f"{self.kind}:{int(self.param)}"
        return self.kind

    def with_chunk(self, chunk: int | None) -> MaskFamily:
        return MaskFamily(self.kind, self.param, chunk)

    def _dense_pieces(self, n: int) -> list[int]:
        """Dense masks wider than the model width d are block-diagonal, with equal blocks of the largest
        divisor of n that is <= d (ours; e.g. 4 blocks of 768 for GPT-2's 3072, 3 of 512 for SmolLM2's 1536)."""
        if not self.chunk or n <= self.chunk:
            return [n]
        block = max(b for b in range(1, self.chunk + 1) if n % b == 0)
        return [block] * (n // block) if block * 4 >= self.chunk else [n]

    def make(self, secret: bytes, label: str, n: int, dtype: torch.dtype) -> Mask:
        """Draw the mask called ``label`` (deterministic given the session secret)."""
        if self.kind in ("orthogonal", "cond", "naive"):
            pieces = self._dense_pieces(n)
            masks = [
                self._dense(CsprngStream(secret, f"{label}#{i}"), w, dtype) for i, w in enumerate(pieces)
            ]
            return masks[0] if len(masks) == 1 else ChunkedMask(masks)
        stream = CsprngStream(secret, label)
        p1, p2 = stream.permutation(n), stream.permutation(n)
        if self.kind == "kron":
            factors = [haar_orthogonal(stream, f).to(dtype) for f in kron_factors(n, int(self.param))]
            return KronMask(factors, p1, p2)
        b = math.gcd(n, int(self.param))
        blocks = torch.stack([haar_orthogonal(stream, b) for _ in range(n // b)]).to(dtype)
        return BlockPermMask(blocks, p1, p2)

    def _dense(self, stream: CsprngStream, n: int, dtype: torch.dtype) -> DenseMask:
        if self.kind == "orthogonal":
            return DenseMask(haar_orthogonal(stream, n).to(dtype), None)
        if self.kind == "cond":
            qa, qb = haar_orthogonal(stream, n), haar_orthogonal(stream, n)
            s = torch.logspace(-0.5, 0.5, n, base=self.param, dtype=torch.float64)
            r = (qa * s) @ qb.T
            r_inv = (qb / s) @ qa.T
            return DenseMask(r.to(dtype), r_inv.to(dtype))
        g = stream.normal(n, n) / math.sqrt(n)
        with single_threaded():
            g_inv = torch.linalg.inv(g)
        return DenseMask(g.to(dtype), g_inv.to(dtype))

    def macs_per_row(self, n: int) -> int:
        """Cost of masking one row of width n, without drawing the mask (for accounting)."""
        if self.kind in ("orthogonal", "cond", "naive"):
            return sum(w * w for w in self._dense_pieces(n))
        if self.kind == "kron":
            return n * sum(kron_factors(n, int(self.param)))
        return n * math.gcd(n, int(self.param))

    def randomness(self, n: int) -> dict[str, float]:
        """Continuous degrees of freedom and permutation bits of one width-n mask (docs, info)."""
        if self.kind in ("orthogonal", "cond", "naive"):
            dof = sum((w * (w - 1) // 2) * (2 if self.kind == "cond" else 1) for w in self._dense_pieces(n))
            if self.kind == "naive":
                dof = sum(w * w for w in self._dense_pieces(n))
            return {"continuous_dof": dof, "permutation_bits": 0.0}
        perm_bits = 2 * math.lgamma(n + 1) / math.log(2)
        if self.kind == "kron":
            dof = sum(f * (f - 1) // 2 for f in kron_factors(n, int(self.param)))
        else:
            b = math.gcd(n, int(self.param))
            dof = (n // b) * b * (b - 1) // 2
        return {"continuous_dof": dof, "permutation_bits": perm_bits}


_SPEC = re.compile(r"^(orthogonal|naive|cond:([0-9.eE+]+)|kron(?::(\d+))?|blockperm(?::(\d+))?)$")


def parse_masks(spec: str) -> MaskFamily:
    """Parse ``orthogonal | cond:K | naive | kron[:F] | blockperm[:B]``."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise P3eftError(
            f"unknown mask family {spec!r}: use orthogonal, cond:K, naive, kron[:F] or blockperm[:B]"
        )
    name = m.group(1)
    if name.startswith("cond:"):
        k = float(m.group(2))
        if not k >= 1.0:
            raise P3eftError(f"condition number must be >= 1, got {k}")
        return MaskFamily("cond", k)
    if name.startswith("kron"):
        f = int(m.group(3) or 16)
        if f < 2:
            raise P3eftError("kron factor bound must be >= 2")
        return MaskFamily("kron", f)
    if name.startswith("blockperm"):
        b = int(m.group(4) or 32)
        if b < 1:
            raise P3eftError("blockperm block size must be >= 1")
        return MaskFamily("blockperm", b)
    return MaskFamily(name)
