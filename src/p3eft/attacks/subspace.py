"""Subspace-membership attack on the static input mask of block 0, through fresh row mixing (ours).

Row mixing (:mod:`p3eft.obfuscatune.mixing`) sends, per group of ``k`` rows, ``Z = M [X R; r]`` with a
fresh secret ``M`` and a noise row ``r``: no observed row is a masked known row, so the pair-based
estimators of :mod:`p3eft.attacks.static_mask` find nothing to fit. But mixing keeps *spans*:
``rowspace(Z) = rowspace([X R; r])``, so every row ``x`` of a call satisfies ``x R in S``, ``S`` the span
of all the rows the call sent. When a call sends fewer rows than the width ``d`` (``n (k+1)/k < d``:
short prompts, single-prompt calls, generation steps), ``S`` is a proper subspace and each *known*
plaintext row gives ``d - dim S`` linear equations on ``R``:

    x R P_perp(S) = 0        (P_perp: projector onto the orthogonal complement of S)

No pairing of rows to tokens is needed, nor the group assignment, nor orthogonality of ``R``. The
attacker computes ``x = RMSNorm(E[t]) g`` for the known tokens from the public model (the candidate
table of :mod:`p3eft.attacks.tokens`), takes ``S`` from the rows it received, and finds ``R`` (up to
scale and sign, which the span cannot see) as the null vector of the quadratic form

    q(Q) = sum_calls || U_c Q P_perp(S_c) ||_F^2     (U_c: orthonormal basis of the call's known rows)

over the ``d^2`` entries of ``Q`` (matrix-free, LOBPCG; ``d^2`` unknowns for every family: the
structure of ``kron`` / ``blockperm`` masks is hidden by their secret permutations, and not used).
``R`` is determined once the known rows span the width (at least ``d`` distinct tokens) and the
equations outnumber the unknowns. With ``R`` known, a later call is read by a membership test: the
tokens of a sent group (``k+1`` rows, in the order sent) are the public candidates ``c_v`` whose image
``c_v R`` lies (nearly) in the group's row span. Mixing hides the positions within a call, not its
tokens (scored as a bag).

The estimate is scored against the victim's true mask (scoring only; the attacker never sees it).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, lobpcg

from p3eft.attacks.structured import mask_error
from p3eft.attacks.tokens import candidate_table, expected_bag_hits
from p3eft.attacks.victim import Victim
from p3eft.obfuscatune.masks import parse_masks, single_threaded
from p3eft.obfuscatune.mixing import parse_defence
from p3eft.obfuscatune.split import mask_sides

LAYER = "h.0.attn_in"
RANK_TOL = 1e-5  # ours: singular values below this (relative) are rounding (fp32 rows: ~1e-7)
MEMBER_TOL = 0.1  # ours: a candidate whose image lies farther (relative) from a group's span is not in it
NULL_GAP = 1e-3  # ours: R counts as determined when the null eigenvalue is this far below the next one
NULL_FLOOR = 1e-6  # ours: ... and the next one clearly above zero (fp32 rows leave ~1e-14; below 1e-6
# LOBPCG had not separated them on the tiny model, benchmarks/obfuscatune_subspace.py)


@dataclass
class CallSpan:
    """What one call gives the attacker: the span of the rows it received and, if known, its tokens."""

    span: torch.Tensor  # (s, d) orthonormal basis of the received rows' span
    known: torch.Tensor | None  # (m, d) orthonormal basis of the known plaintext rows' span (None: unknown)
    rows: int  # rows received

    @property
    def informative(self) -> bool:
        return self.span.shape[0] < self.span.shape[1]


def row_basis(rows: torch.Tensor, tol: float = RANK_TOL) -> torch.Tensor:
    """Orthonormal basis (r, d) of the row span of ``rows`` (numerical rank at relative ``tol``)."""
    rows = rows.to(torch.float64)
    if rows.shape[0] == 0:
        return rows
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    r = int((s > tol * s[0]).sum()) if float(s[0]) > 0 else 0
    return vh[:r]


def call_spans(victim: Victim, cands: torch.Tensor, known_calls: int) -> list[CallSpan]:
    """Per call of block 0's attention input: the received span; the known rows for the first ``known_calls``."""
    out = []
    calls = victim.traffic.calls()
    for i, (c, call) in enumerate(zip(victim.transcript.forwards(LAYER), calls, strict=True)):
        z = c.sent[0].reshape(-1, c.sent[0].shape[-1])
        known = row_basis(cands[torch.unique(call["input_ids"].flatten())]) if i < known_calls else None
        out.append(CallSpan(row_basis(z), known, int(z.shape[0])))
    return out


class _Operator:
    """``Q -> sum_c U_c^T (U_c Q P_perp(S_c))``: the quadratic form's matrix, applied without forming it."""

    def __init__(self, spans: list[CallSpan], d: int) -> None:
        use = [s for s in spans if s.known is not None and s.informative and len(s.known)]
        self.d = d
        self.u = [s.known for s in use]
        self.b = [s.span for s in use]
        self.calls = len(use)
        self.u_all = torch.cat(self.u) if self.u else torch.zeros(0, d, dtype=torch.float64)
        ends = np.cumsum([len(u) for u in self.u]).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends, strict=True)) if ends else []
        gram = sum((u.T @ u for u in self.u), torch.zeros(d, d, dtype=torch.float64))  # sum of projectors
        # preconditioner (ours): A ~ G (x) I with G the sum of the known rows' projectors (a random span
        # keeps about the same share of every direction), so (G + eps I)^-1 evens out directions that
        # few known rows reach
        self.gram = gram
        self.g_inv = torch.linalg.inv(gram + 1e-6 * max(self.calls, 1) * torch.eye(d, dtype=torch.float64))

    def metric(self, q: np.ndarray) -> np.ndarray:
        """``Q -> G Q``: the generalised problem's right-hand side, ``sum_c ||U_c Q||^2`` (how much the
        known rows reach Q's input directions)."""
        d = self.d
        qs = torch.from_numpy(np.ascontiguousarray(q)).reshape(d, d, -1).permute(2, 0, 1)
        return (self.gram @ qs).permute(1, 2, 0).reshape(d * d, -1).numpy()

    def precondition(self, q: np.ndarray) -> np.ndarray:
        d = self.d
        qs = torch.from_numpy(np.ascontiguousarray(q)).reshape(d, d, -1).permute(2, 0, 1)
        return (self.g_inv @ qs).permute(1, 2, 0).reshape(d * d, -1).numpy()

    def __call__(self, q: np.ndarray) -> np.ndarray:
        d = self.d
        qs = torch.from_numpy(np.ascontiguousarray(q)).reshape(d, d, -1).permute(2, 0, 1)  # (m, d, d)
        y = self.u_all @ qs  # (m, N, d): one large product for every call's known rows
        for (a, e), b in zip(self.bounds, self.b, strict=True):
            y[:, a:e] -= (y[:, a:e] @ b.T) @ b  # project each call's rows off its received span
        out = self.u_all.T @ y
        return out.permute(1, 2, 0).reshape(d * d, -1).numpy()


@dataclass
class MaskEstimate:
    q: torch.Tensor | None  # the attacker's estimate of R, up to scale and sign (None: no equations)
    eigenvalues: list[
        float
    ]  # smallest generalised eigenvalues (share of the known rows' energy off the spans)
    determined: bool  # the attacker's own criterion: one clear null direction


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def estimate_mask(
    spans: list[CallSpan], d: int, *, q0: torch.Tensor | None = None, seed: int = 0, maxiter: int = 400
) -> MaskEstimate:
    """The null direction of the quadratic form relative to ``sum_c ||U_c Q||^2`` (LOBPCG for the 2 smallest
    generalised eigenpairs, warm-started from ``q0``, the previous estimate). Normalised to Frobenius
    norm sqrt(d) (an orthogonal mask's)."""
    op = _Operator(spans, d)
    if op.calls == 0:
        return MaskEstimate(None, [], False)
    a = LinearOperator((d * d, d * d), matvec=op, matmat=op, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((d * d, 2))
    if q0 is not None:
        x0[:, 0] = q0.reshape(-1).numpy()
    m = LinearOperator((d * d, d * d), matvec=op.precondition, matmat=op.precondition, dtype=np.float64)
    # generalised problem A q = lambda (G (x) I) q (ours): a map that sends the input directions the known
    # rows barely reach (real embeddings are anisotropic) anywhere is not a near-null vector of it
    b = LinearOperator((d * d, d * d), matvec=op.metric, matmat=op.metric, dtype=np.float64)
    with warnings.catch_warnings():  # "not reaching the requested tolerance": the eigenvalues say how far
        warnings.simplefilter("ignore", UserWarning)
        vals, vecs = lobpcg(a, x0, B=b, M=m, largest=False, tol=1e-9, maxiter=maxiter)
    order = np.argsort(vals)
    vals, vecs = vals[order], vecs[:, order]
    q = torch.from_numpy(vecs[:, 0].copy()).reshape(d, d)
    q = q * math.sqrt(d) / q.norm()
    determined = bool(vals[1] >= NULL_FLOOR and vals[0] <= NULL_GAP * vals[1])
    return MaskEstimate(q, [float(v) for v in vals], determined)


def scored_error(q: torch.Tensor | None, r_true: torch.Tensor) -> float | None:
    """Scoring only: relative Frobenius error of ``alpha Q`` with the best scalar ``alpha`` (the span
    cannot see the mask's scale or sign; decoding does not need them, the public weights fix them)."""
    if q is None:
        return None
    alpha = float((q * r_true).sum() / (q * q).sum())
    return mask_error(alpha * q, r_true)


def decode_call(
    z: torch.Tensor,
    q: torch.Tensor,
    cands: torch.Tensor,
    group: int,
    per_group: int,
    *,
    tol: float = MEMBER_TOL,
) -> list[int]:
    """Tokens of one received call, read group by group: the candidates whose image under the mask
    estimate ``q`` lies within ``tol`` (relative) of the group's span, at most ``per_group`` per group."""
    z = z.to(torch.float64)
    back = torch.linalg.solve(q.T, z.T).T  # z Q^-1: the groups' spans in plaintext coordinates
    cn = cands.norm(dim=1).clamp_min(1e-30)
    out: list[int] = []
    for g0 in range(0, back.shape[0], group):
        basis = row_basis(back[g0 : g0 + group])
        inside = (cands @ basis.T).norm(dim=1) / cn
        resid = (1 - inside.clamp(max=1) ** 2).clamp_min(0).sqrt()
        best = torch.argsort(resid)[:per_group]
        out += [int(v) for v in best if float(resid[v]) <= tol]
    return out


def bag_score(
    guesses: list[list[int]],
    truths: list[torch.Tensor],
    valid: list[torch.Tensor],
    prior: torch.Tensor | None = None,
) -> dict:
    """Bag-of-tokens recall (share of the real positions' tokens found, with multiplicity) and precision;
    with a unigram ``prior``, the recall of as many guesses drawn from it (the baseline)."""
    hit = total = guessed = 0
    base = 0.0
    for g, t, v in zip(guesses, truths, valid, strict=True):
        true_bag = Counter(t.flatten()[v.flatten().bool()].tolist())
        guess_bag = Counter(g)
        hit += sum(min(c, true_bag.get(k, 0)) for k, c in guess_bag.items())
        n = sum(true_bag.values())
        total += n
        guessed += len(g)
        if prior is not None:
            base += expected_bag_hits(prior, true_bag, n)
    return {
        "bag_recall": hit / max(total, 1),
        "bag_precision": hit / max(guessed, 1),
        "bag_unigram_baseline": None if prior is None else base / max(total, 1),
        "positions": total,
    }


def subspace_attack(
    victim: Victim,
    cands: torch.Tensor | None = None,
    *,
    known_calls: int | None = None,
    target: float = 1e-3,
    every: int = 1,
    prior: torch.Tensor | None = None,
    on_point=None,
    oracle_mask: bool = False,
) -> dict:
    """Estimate block 0's input mask from the first ``known_calls`` calls (default: half), adding one
    known call at a time (every ``every``-th count solved, once the known rows span the width), then
    decode the remaining calls' tokens with the final estimate. ``on_point(entry)``: called after each
    estimate with its curve entry. ``oracle_mask`` (a control, not an attack): skip the estimate and decode
    with the victim's true mask, i.e. what a holder of the mask reads from the same traffic."""
    d = int(victim.public.config.hidden_size)
    empty = {"applicable": False, "calls_needed": None, "rows_needed": None}
    if not mask_sides(victim.config.mode, "attn_in").input:
        return empty
    cands = candidate_table(victim.public) if cands is None else cands
    calls = victim.traffic.calls()
    known_calls = len(calls) // 2 if known_calls is None else min(known_calls, len(calls))
    spans = call_spans(victim, cands, known_calls)
    r_true = victim.true_mask(LAYER)
    defence = parse_defence(victim.config.defence)

    curve, needed, est, q = [], None, MaskEstimate(None, [], False), None
    rows = distinct = 0
    seen: set[int] = set()
    rank = torch.zeros(0, d, dtype=torch.float64)
    if oracle_mask:
        q = r_true
    for i in range(0 if oracle_mask else known_calls):
        ids = calls[i]["input_ids"].flatten()
        rows += len(ids)
        seen |= set(ids.tolist())
        distinct = len(seen)
        rank = row_basis(torch.cat([rank, spans[i].known])) if len(rank) < d else rank
        if len(rank) < d or ((i + 1) % every and i + 1 < known_calls):
            continue  # R is not determined on directions no known row reaches
        est = estimate_mask(spans[: i + 1], d, q0=q, seed=victim.config.seed)
        q = est.q
        err = scored_error(q, r_true)
        curve.append(
            {
                "calls": i + 1,
                "rows": rows,
                "distinct_tokens": distinct,
                "mask_error": err,
                "determined": est.determined,
                "eigenvalues": est.eigenvalues,
            }
        )
        if on_point is not None:  # long runs report each estimate as it comes
            on_point(curve[-1])
        if needed is None and err is not None and err <= target:
            needed = curve[-1]
    fam = parse_masks(victim.config.masks)
    decoded = None
    if q is not None and known_calls < len(calls):
        later = list(zip(victim.transcript.forwards(LAYER), calls, strict=True))[known_calls:]
        guesses = []
        for c, call in later:
            # the grouping follows from the public defence setting and the call's row count (which the
            # cloud reads off the sent counts at two boundaries of different widths)
            lay = defence.layout(call["input_ids"].numel(), d)
            guesses.append(decode_call(c.sent[0].reshape(-1, d), q, cands, lay.size, lay.real))
        decoded = bag_score(
            guesses,
            [call["input_ids"] for _, call in later],
            [call["attention_mask"] for _, call in later],
            prior,
        )
        decoded["calls"] = len(later)
    informative = sum(s.informative for s in spans[:known_calls])
    return {
        "applicable": True,
        "mask_family": fam.spec,
        "target": target,
        "known_calls": known_calls,
        "known_rows": rows,
        "informative_known_calls": informative,
        "rows_per_call": [s.rows for s in spans],
        "span_dims": [int(s.span.shape[0]) for s in spans],
        "calls_needed": None if needed is None else needed["calls"],
        "rows_needed": None if needed is None else needed["rows"],
        "distinct_tokens_needed": None if needed is None else needed["distinct_tokens"],
        "mask_error": curve[-1]["mask_error"] if curve else None,
        "determined": est.determined,
        "curve": curve,
        "decoded": decoded,
    }
