"""Fresh per-call row mixing of what crosses the boundary (after DarKnight; ours in this setting).

An orthogonal mask ``R`` keeps norms and inner products, so masked rows ``x R`` can be matched against
the public embedding table (see :mod:`p3eft.attacks.tokens`). Linear layers act row by row, so the
enclave may send *linear combinations* of its rows instead of the rows themselves and undo the
combination on the answer. For every call the enclave

1. shuffles the ``n`` rows with a fresh random permutation and cuts them into groups of ``a`` real
   rows (padding the last group with random rows);
2. appends ``b`` random *noise rows* to every group (DarKnight's blinding rows);
3. sends ``Z = M [X; r]`` per group, with a fresh random, well-conditioned, non-orthogonal
   ``(a+b) x (a+b)`` matrix ``M = Q_1 diag(s) Q_2^T`` (singular values log-uniform in
   ``[MIX_COND^-1/2, MIX_COND^1/2]``);
4. gets ``U = Z W*`` back and keeps the first ``a`` rows of ``M^-1 U`` per group (``C^T U``, with
   ``C^T`` those rows: ``C^T`` annihilates the random rows' part of ``Z``).

The backward pass sends ``C G`` (``= M^-T [G; 0]``) and keeps ``A^T dZ`` (``A``: the first ``a``
columns of ``M``); the untrusted side's LoRA gradient ``Z^T C G = X^T G`` is exactly the unmixed one. What the
untrusted side loses: which row is which position (so the loss span), every row's norm and the Gram
matrix of the rows (each observed row is a random combination that includes random vectors).

``mix:K`` uses ``a = K, b = 1``. What it keeps is the *span*: every masked row ``x R`` of a call lies
in the span of the rows the call sent, so a call that sends fewer rows than the width ``w`` gives an
attacker who knows some of its text linear equations on ``R`` (:mod:`p3eft.attacks.subspace`).
``mix:K+fill`` (span filling, ours) closes that: each call carries at least ``w + FILL_MARGIN`` random
rows, which alone span the whole width whatever the real rows are, so the span of what is sent is
the whole space and says nothing about ``R``. Every group still holds at least one real row (a group
of random rows only could be told apart and dropped). Where ``n / K >= w + FILL_MARGIN`` (large batches)
``mix:K+fill`` is ``mix:K``; below that it uses ``b = 1`` and ``a = floor(n / (w + FILL_MARGIN))``, and for
calls shorter than ``w + FILL_MARGIN`` rows ``a = 1`` and ``b = ceil((w + FILL_MARGIN) / n)``.

Cost (the enclave's): ``(a+b)^2 / a`` multiply-accumulates per element of every crossing row to mix it
with a dense matrix (``2 (a+b)`` with the cheaper construction span filling uses for short calls,
:class:`SpanFill`), and ``a + b`` to unmix an answer; the accelerator computes ``(a+b)/a`` times its work
(the random rows).
Randomness: one ChaCha20 stream per call, keyed by the session secret and a call counter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from p3eft.errors import P3eftError
from p3eft.obfuscatune.masks import CsprngStream

MIX_COND = 4.0  # ours: condition-number bound of each mixing matrix (fp32 keeps ~6 digits after unmixing)
FILL_MARGIN = 16  # ours: random rows beyond the width: a (w + 16) x w Gaussian block is well conditioned
_SPEC = re.compile(r"^(none|mix(?::(\d+))?(\+fill)?)$")


@dataclass(frozen=True)
class GroupLayout:
    """How one call's rows are grouped: ``real`` real rows and ``random`` random rows per group."""

    real: int
    random: int

    @property
    def size(self) -> int:
        return self.real + self.random

    def groups(self, rows: int) -> int:
        return max(1, math.ceil(rows / self.real))

    def sent_rows(self, rows: int) -> int:
        return self.groups(rows) * self.size


@dataclass(frozen=True)
class Defence:
    """A parsed ``defence`` setting: ``none``, ``mix:K`` (K real rows per group plus one noise row) or
    ``mix:K+fill`` (the same, with at least the width's worth of random rows in every call)."""

    kind: str  # none | mix
    k: int = 0
    fill: bool = False

    @property
    def spec(self) -> str:
        if self.kind != "mix":
            return "none"
        return f"mix:{self.k}" + ("+fill" if self.fill else "")

    def layout(self, rows: int, width: int) -> GroupLayout:
        """The grouping of a call of ``rows`` real rows of ``width`` columns (module docstring)."""
        if self.kind != "mix":
            return GroupLayout(1, 0)
        need = width + FILL_MARGIN
        if not self.fill or math.ceil(rows / self.k) >= need:
            return GroupLayout(self.k, 1)
        if rows >= need:
            return GroupLayout(rows // need, 1)
        return GroupLayout(1, math.ceil(need / max(rows, 1)))

    def mix_macs_per_element(self, rows: int, width: int) -> float:
        """Enclave multiply-accumulates per element of a real row to mix it: per group ``(a+b)^2`` with a
        dense matrix (one random row per group), ``2 a (a+b)`` with :class:`SpanFill` (more), spread
        over the call's real rows (``(a+b)^2 / a`` and ``2 (a+b)`` when the groups are full)."""
        if self.kind != "mix":
            return 0.0
        lay = self.layout(rows, width)
        per_group = lay.size**2 if lay.random == 1 else 2.0 * lay.real * lay.size
        return lay.groups(rows) * per_group / max(rows, 1)

    def unmix_macs_per_element(self, rows: int, width: int) -> float:
        """... per element of a real row's answer to unmix it (``C^T U``: ``a (a+b)`` per group)."""
        if self.kind != "mix":
            return 0.0
        lay = self.layout(rows, width)
        return lay.groups(rows) * lay.real * lay.size / max(rows, 1)

    def accelerator_factor(self, rows: int, width: int) -> float:
        """How much more the accelerator computes (the random rows): sent rows / real rows."""
        return self.layout(rows, width).sent_rows(rows) / max(rows, 1) if self.kind == "mix" else 1.0


def parse_defence(spec: str) -> Defence:
    """Parse ``none | mix[:K][+fill]`` (K >= 2: a single mixed row would keep its direction)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise P3eftError(f"unknown defence {spec!r}: use none, mix[:K] or mix[:K]+fill")
    if m.group(1) == "none":
        return Defence("none")
    k = int(m.group(2) or 4)
    if k < 2:
        raise P3eftError("mix:K needs K >= 2 rows per group")
    return Defence("mix", k, fill=m.group(3) is not None)


@dataclass
class _Grouping:
    """One call's secret grouping: the permutation that cuts the (padded) real rows into groups, how
    the real rows enter each group's sent rows (``A``) and the rows that undo it (``C``: ``C^T A = I``,
    and ``C^T`` annihilates the random rows' part)."""

    n: int  # real rows
    layout: GroupLayout
    perm: torch.Tensor  # (groups*a,) padded row order
    stream: CsprngStream
    a_mat: torch.Tensor  # (groups, a+b, a)
    c_mat: torch.Tensor  # (groups, a+b, a)

    @property
    def groups(self) -> int:
        return self.layout.groups(self.n)

    @property
    def real(self) -> int:
        return self.layout.real

    def _noise(self, shape: tuple[int, ...], scale: float, like: torch.Tensor) -> torch.Tensor:
        dtype = (
            torch.float32 if like.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
        )
        return (self.stream.normal(*shape, dtype=dtype) * scale).to(dtype=like.dtype, device=like.device)

    def _grouped(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(n, w) rows -> (groups, a, w): shuffled real rows and the padding rows."""
        return torch.cat([x, pad], dim=0)[self.perm].reshape(self.groups, self.real, -1)

    def _real_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(n, w) real rows -> (groups, a, w) with random padding rows, and the random rows' scale."""
        scale = self._scale(x)
        pad = self._noise((self.groups * self.real - self.n, x.shape[1]), scale, x)
        return self._grouped(x, pad), scale

    def _ungroup(self, y: torch.Tensor) -> torch.Tensor:
        """(groups, a, w) real rows' results -> (n, w) in the original order."""
        y = y.reshape(self.groups * self.real, -1)
        out = torch.empty_like(y)
        out[self.perm] = y
        return out[: self.n]

    @staticmethod
    def _scale(x: torch.Tensor) -> float:
        """The random rows' scale: the real rows' RMS (so neither kind stands out by size)."""
        scale = float(x.pow(2).mean().sqrt()) if x.numel() else 1.0
        return scale if math.isfinite(scale) and scale > 0 else 1.0

    def mix_grad(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the real rows' outputs -> ``C [G]`` per group (``C^T`` = the unmixing rows)."""
        zeros = g.new_zeros(self.groups * self.real - self.n, g.shape[1])
        c = self.c_mat.to(dtype=g.dtype, device=g.device)
        return (c @ self._grouped(g, zeros)).reshape(-1, g.shape[1])

    def unmix(self, u: torch.Tensor) -> torch.Tensor:
        """(groups*(a+b), w) answers -> the n real rows' answers (``C^T U`` per group), in order."""
        c_t = self.c_mat.transpose(1, 2).to(dtype=u.dtype, device=u.device)
        return self._ungroup(c_t @ u.reshape(self.groups, self.layout.size, -1))

    def unmix_grad(self, dz: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the sent rows -> gradient w.r.t. the real rows: ``A^T dZ`` per group."""
        a_t = self.a_mat.transpose(1, 2).to(dtype=dz.dtype, device=dz.device)
        return self._ungroup(a_t @ dz.reshape(self.groups, self.layout.size, -1))


@dataclass
class RowMix(_Grouping):
    """``mix:K``: per group ``Z = M [X; r]`` with a dense, well-conditioned ``(a+b) x (a+b)`` matrix."""

    m: torch.Tensor  # (groups, a+b, a+b); A = its first a columns, C^T = the first a rows of M^-1

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(n, w) -> (groups*(a+b), w): ``M [X; r]`` per group, with random padding and noise rows."""
        w = x.shape[1]
        xg, scale = self._real_groups(x)
        noise = self._noise((self.groups * self.layout.random, w), scale, x)
        rows = torch.cat([xg, noise.reshape(self.groups, self.layout.random, w)], dim=1)
        return (self.m.to(dtype=x.dtype, device=x.device) @ rows).reshape(-1, w)


@dataclass
class SpanFill(_Grouping):
    """Span filling's short calls (ours): ``a`` real rows and ``b >> a`` random rows per group, sent as
    ``Z = A X + (I - C A^T) G`` with a Gaussian ``A`` of ``(a+b) x a``, ``C = A (A^T A)^-1`` and fresh
    Gaussian ``G``. The second term spans the ``b`` directions that ``C`` annihilates, so ``C^T Z = X``.
    Since ``C A^T = A C^T`` it is computed as ``Z = A (X - C^T G) + G``: ``2 (a+b)`` multiply-accumulates
    per element of a real row, where a dense ``(a+b)^2`` matrix would cost ``(a+b)^2 / a`` (``b``
    reaches the width for one-row calls). ``A`` has entries of variance ``1/(a+b)``, so
    ``A^T A ~ I``: every sent row carries a small share of each real row under noise of the real rows'
    RMS, and the unmixing adds no more than float rounding."""

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[1]
        xg, scale = self._real_groups(x)
        a = self.a_mat.to(dtype=x.dtype, device=x.device)
        c = self.c_mat.to(dtype=x.dtype, device=x.device)
        g = self._noise((self.groups * self.layout.size, w), scale, x).reshape(
            self.groups, self.layout.size, w
        )
        # A X + (I - C A^T) G, associated as A (X - C^T G) + G (C A^T = A C^T): two (a+b) x a products
        # per column instead of three; the same rows up to rounding
        return (a @ (xg - c.transpose(1, 2) @ g) + g).reshape(-1, w)


def _haar(stream: CsprngStream, groups: int, size: int) -> torch.Tensor:
    q, r = torch.linalg.qr(stream.normal(groups, size, size))
    return q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)


def draw_mix(secret: bytes, label: str, n: int, layout: GroupLayout) -> RowMix | SpanFill:
    """A fresh mixing for ``n`` rows grouped by ``layout``, from the CSPRNG stream ``label`` (one label
    per call): a dense :class:`RowMix` for one random row per group, :class:`SpanFill` for more."""
    stream = CsprngStream(secret, label)
    groups, size = layout.groups(n), layout.size
    perm = stream.permutation(groups * layout.real)
    if layout.random > 1:
        a = stream.normal(groups, size, layout.real) / math.sqrt(size)
        c = a @ torch.linalg.inv(a.transpose(1, 2) @ a)
        return SpanFill(n, layout, perm, stream, a_mat=a, c_mat=c)
    q1, q2 = _haar(stream, groups, size), _haar(stream, groups, size)
    half = 0.5 * math.log(MIX_COND)
    u = torch.from_numpy(stream.uniform(groups * size)).reshape(groups, 1, size)
    s = torch.exp((2 * u - 1) * half)  # singular values, log-uniform in [cond^-1/2, cond^1/2]
    m = (q1 * s) @ q2.transpose(1, 2)
    m_inv = (q2 / s) @ q1.transpose(1, 2)
    a, c = m[:, :, : layout.real], m_inv[:, : layout.real].transpose(1, 2)
    return RowMix(n, layout, perm, stream, a_mat=a, c_mat=c, m=m)
