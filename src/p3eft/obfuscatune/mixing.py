"""Fresh per-call row mixing of what crosses the boundary (after DarKnight; ours in this setting).

An orthogonal mask ``R`` keeps norms and inner products, so masked rows ``x R`` can be matched against
the public embedding table (see :mod:`p3eft.attacks.tokens`). Linear layers act row by row, so the
enclave may send *linear combinations* of its rows instead of the rows themselves and undo the
combination on the answer. For every call the enclave

1. shuffles the ``n`` rows with a fresh random permutation and cuts them into groups of ``k``
   (padding the last group with random rows);
2. appends one random *noise row* to every group (DarKnight's blinding row);
3. sends ``Z = M [X; r]`` per group, with a fresh random, well-conditioned, non-orthogonal
   ``(k+1) x (k+1)`` matrix ``M = Q_1 diag(s) Q_2^T`` (singular values log-uniform in
   ``[MIX_COND^-1/2, MIX_COND^1/2]``);
4. gets ``U = Z W*`` back and keeps the first ``k`` rows of ``M^-1 U`` per group.

The backward pass sends ``M^-T [G; 0]`` and keeps the first ``k`` rows of ``M^T dZ``; the untrusted
side's LoRA gradient ``Z^T dU = [X; r]^T [G; 0] = X^T G`` is exactly the unmixed one. What the
untrusted side loses: which row is which position (so the loss span), every row's norm and the Gram
matrix of the rows (each observed row is a random combination that includes a random vector).

Cost (the enclave's): ``(k+1)^2 / k`` multiply-accumulates per element of every crossing row, both
ways, instead of the ``n`` of a dense mask; the accelerator does ``(k+1)/k`` times its work (the noise
rows). Randomness: one ChaCha20 stream per call, keyed by the session secret and a call counter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from p3eft.errors import P3eftError
from p3eft.obfuscatune.masks import CsprngStream

MIX_COND = 4.0  # ours: condition-number bound of each mixing matrix (fp32 keeps ~6 digits after unmixing)
_SPEC = re.compile(r"^(none|mix(?::(\d+))?)$")


@dataclass(frozen=True)
class Defence:
    """A parsed ``defence`` setting: ``none`` or ``mix:K`` (K real rows per group plus one noise row)."""

    kind: str  # none | mix
    k: int = 0

    @property
    def spec(self) -> str:
        return f"mix:{self.k}" if self.kind == "mix" else "none"

    def mix_macs_per_element(self) -> float:
        """Enclave multiply-accumulates per element of a crossing row (mix or unmix)."""
        return (self.k + 1) ** 2 / self.k if self.kind == "mix" else 0.0

    def accelerator_factor(self) -> float:
        """How much more the accelerator computes (the noise rows)."""
        return (self.k + 1) / self.k if self.kind == "mix" else 1.0


def parse_defence(spec: str) -> Defence:
    """Parse ``none | mix[:K]`` (K >= 2: a single mixed row would keep its direction)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise P3eftError(f"unknown defence {spec!r}: use none or mix[:K]")
    if m.group(1) == "none":
        return Defence("none")
    k = int(m.group(2) or 4)
    if k < 2:
        raise P3eftError("mix:K needs K >= 2 rows per group")
    return Defence("mix", k)


@dataclass
class RowMix:
    """One call's secret mixing: permutation, per-group matrices and their inverses."""

    n: int  # real rows
    k: int
    perm: torch.Tensor  # (groups*k,) padded row order
    m: torch.Tensor  # (groups, k+1, k+1)
    m_inv: torch.Tensor
    stream: CsprngStream

    @property
    def groups(self) -> int:
        return self.m.shape[0]

    def _noise(self, rows: int, width: int, scale: float, like: torch.Tensor) -> torch.Tensor:
        return (self.stream.normal(rows, width) * scale).to(dtype=like.dtype, device=like.device)

    def _group(self, x: torch.Tensor, pad: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """(n, w) rows -> (groups, k+1, w): shuffled real rows, padding rows, one extra row per group."""
        xs = torch.cat([x, pad], dim=0)[self.perm].reshape(self.groups, self.k, -1)
        return torch.cat([xs, extra.unsqueeze(1)], dim=1)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(n, w) -> (groups*(k+1), w): ``M [X; r]`` per group, with random padding and noise rows."""
        w = x.shape[1]
        scale = float(x.pow(2).mean().sqrt()) if x.numel() else 1.0
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        pad = self._noise(self.groups * self.k - self.n, w, scale, x)
        noise = self._noise(self.groups, w, scale, x)
        m = self.m.to(dtype=x.dtype, device=x.device)
        return (m @ self._group(x, pad, noise)).reshape(-1, w)

    def unmix(self, u: torch.Tensor) -> torch.Tensor:
        """(groups*(k+1), w) answers -> the n real rows' answers, in the original order."""
        m_inv = self.m_inv.to(dtype=u.dtype, device=u.device)
        y = (m_inv @ u.reshape(self.groups, self.k + 1, -1))[:, : self.k].reshape(self.groups * self.k, -1)
        out = torch.empty_like(y)
        out[self.perm] = y
        return out[: self.n]

    def mix_grad(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the real rows' outputs -> ``M^-T [G; 0]`` (padding and noise rows get 0)."""
        w = g.shape[1]
        zeros = g.new_zeros(self.groups * self.k - self.n, w)
        m_inv_t = self.m_inv.transpose(1, 2).to(dtype=g.dtype, device=g.device)
        return (m_inv_t @ self._group(g, zeros, g.new_zeros(self.groups, w))).reshape(-1, w)

    def unmix_grad(self, dz: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the sent rows -> gradient w.r.t. the real rows: first k rows of ``M^T dZ``."""
        m_t = self.m.transpose(1, 2).to(dtype=dz.dtype, device=dz.device)
        y = (m_t @ dz.reshape(self.groups, self.k + 1, -1))[:, : self.k].reshape(self.groups * self.k, -1)
        out = torch.empty_like(y)
        out[self.perm] = y
        return out[: self.n]


def draw_mix(secret: bytes, label: str, n: int, k: int) -> RowMix:
    """A fresh mixing for ``n`` rows from the CSPRNG stream ``label`` (one label per call)."""
    stream = CsprngStream(secret, label)
    groups = max(1, math.ceil(n / k))
    perm = stream.permutation(groups * k)
    q1, r1 = torch.linalg.qr(stream.normal(groups, k + 1, k + 1))
    q1 = q1 * torch.sign(torch.diagonal(r1, dim1=1, dim2=2)).unsqueeze(1)
    q2, r2 = torch.linalg.qr(stream.normal(groups, k + 1, k + 1))
    q2 = q2 * torch.sign(torch.diagonal(r2, dim1=1, dim2=2)).unsqueeze(1)
    half = 0.5 * math.log(MIX_COND)
    u = torch.from_numpy(stream.uniform(groups * (k + 1))).reshape(groups, 1, k + 1)
    s = torch.exp((2 * u - 1) * half)  # singular values, log-uniform in [cond^-1/2, cond^1/2]
    m = (q1 * s) @ q2.transpose(1, 2)
    m_inv = (q2 / s) @ q1.transpose(1, 2)
    return RowMix(n, k, perm, m, m_inv, stream)
