"""Structure-aware weight recovery: ``blockperm`` and ``kron`` masks give their structure away (ours, after
Procrustes-style recovery of permuted/orthogonal obfuscation).

``blockperm:B`` is ``R = P1 diag(B_1..B_m) P2``: every masked coordinate is a combination of only B
plaintext coordinates, and the B masked coordinates of one block all use the *same* B. So wherever the
attacker holds a pair ``(basis, target)`` with ``target ~ basis @ R`` it can find the support first and
then solve m small B x B Procrustes problems instead of one dense n x n one:

1. **support**: for every masked coordinate j, the B columns of ``basis`` that best explain
   ``target[:, j]``: orthogonal matching pursuit (a B-sparse fit, defined even where a dense one is
   not) or, when ``basis`` has at least as many rows as columns, the B largest coefficients of a dense
   least-squares fit, whichever leaves the smaller residual;
2. **blocks**: masked coordinates whose supports overlap in at least half their entries are joined
   (connected components); a component of exactly B coordinates is a block, its input set the B most
   voted plaintext coordinates;
3. **per-block Procrustes**: ``B_m = argmin ||basis[:, S_m] Q - target[:, G_m]||`` over orthogonal Q.

The pairs the untrusted side has:

* **weights alone, one-sided masks** (``--mode paper``): ``W* = W R_out`` (output side) or
  ``W*^T = W^T R_in`` (input side, orthogonal), with ``W_pub ~ W`` as the basis;
* **weights plus activations, two-sided masks** (strict): the sent rows ``X* = X R_in`` with ``X``
  estimated by running the public model on the decoded tokens (as in :mod:`p3eft.attacks.weights`),
  then ``R_in W* = W R_out`` against ``W_pub``.

Why it matters: a dense Procrustes fit of ``R_out`` against ``W_pub`` has n(n-1)/2 free parameters and
absorbs much of the proprietary delta into the rotation (rho ~ 0.5 on our tiny model); the block fit has
only m B(B-1)/2, so the recovered ``W`` keeps most of the delta (rho 0.77-0.85 on the tiny model). Metrics: rho per weight (as in
:mod:`p3eft.attacks.weights`), the share of masked coordinates whose support was recovered exactly, and
the relative error of the recovered mask, both scored against the victim's true masks.

``kron:F`` is ``R = P1 (R_1 (x) ... (x) R_k) P2``, dense between its permutations; its structure is
attacked through a dense estimate ``C`` (orthogonal Procrustes of the same pairs): the two permutations
up to relabelling within each factor come from the spectrum of ``|C|^2 |C|^2^T`` (see
:func:`kron_labels`), then the factors from the nearest Kronecker product of ``C`` (Van Loan and
Pitsianis 1993), made orthogonal. The few parameters of the factors average out most of the error of
``C``, whose dense fit absorbs part of the delta. Other families are reported as not applicable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from p3eft.attacks.tokens import procrustes
from p3eft.attacks.victim import Victim
from p3eft.attacks.weights import _plausible, decoded_input_pairs, rho
from p3eft.obfuscatune.masks import kron_factors, parse_masks, single_threaded
from p3eft.obfuscatune.split import mask_sides


@dataclass
class BlockFit:
    """A structured estimate of a right-acting mask from ``target ~ basis @ R``."""

    r: torch.Tensor  # (n, n) estimate, zero outside the recovered blocks
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (input coords S, output coords G, B)

    @property
    def covered(self) -> torch.Tensor:
        """Output coordinates that belong to a recovered block."""
        mask = torch.zeros(self.r.shape[1], dtype=torch.bool)
        for _, g, _ in self.blocks:
            mask[g] = True
        return mask


def block_size(masks_spec: str, n: int) -> int | None:
    """The block width of a ``blockperm`` mask of width n (public: the mask family is in the settings)."""
    fam = parse_masks(masks_spec)
    return math.gcd(n, int(fam.param)) if fam.kind == "blockperm" else None


def _sparse_residual(basis: torch.Tensor, t: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Per target column, the residual norm of its least-squares fit on the chosen basis columns."""
    sub = basis[:, chosen].permute(1, 0, 2)  # (c, rows, k)
    coef = torch.linalg.lstsq(sub, t.T.unsqueeze(-1)).solution  # (c, k, 1)
    return (t - (sub @ coef).squeeze(-1).T).norm(dim=0)


def _omp(basis: torch.Tensor, t: torch.Tensor, b: int) -> torch.Tensor:
    """Orthogonal matching pursuit (Pati et al. 1993), b steps per column of t, batched over columns."""
    unit = basis / basis.norm(dim=0).clamp_min(1e-300)
    cols = t.shape[1]
    chosen = torch.zeros(cols, 0, dtype=torch.long)
    taken = torch.zeros(cols, basis.shape[1], dtype=torch.bool)
    resid = t
    for _ in range(b):
        corr = (unit.T @ resid).abs().T  # (c, n_in)
        corr[taken] = -1.0
        pick = corr.argmax(dim=1)
        taken[torch.arange(cols), pick] = True
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
        sub = basis[:, chosen].permute(1, 0, 2)
        coef = torch.linalg.lstsq(sub, t.T.unsqueeze(-1)).solution
        resid = t - (sub @ coef).squeeze(-1).T
    return chosen


def sparse_supports(basis: torch.Tensor, target: torch.Tensor, b: int, chunk: int = 128) -> torch.Tensor:
    """(n_out, b) indices of the basis columns that explain each target column: orthogonal matching
    pursuit and, with at least as many rows as columns, also the b largest coefficients of the dense
    least-squares fit (robust to correlated columns); per column the one with the smaller residual."""
    basis = basis.to(torch.float64)
    dense = None
    if basis.shape[0] >= basis.shape[1]:
        coef = torch.linalg.lstsq(basis, target.to(torch.float64)).solution  # (n_in, n_out)
        dense = torch.topk(coef.abs().T, b, dim=1).indices
    out = []
    for c0 in range(0, target.shape[1], chunk):
        t = target[:, c0 : c0 + chunk].to(torch.float64)  # (rows, c)
        chosen = _omp(basis, t, b)
        if dense is not None:
            alt = dense[c0 : c0 + chunk]
            better = _sparse_residual(basis, t, alt) < _sparse_residual(basis, t, chosen)
            chosen = torch.where(better[:, None], alt, chosen)
        out.append(chosen)
    return torch.cat(out) if out else torch.zeros(0, b, dtype=torch.long)


def _components(adjacent: torch.Tensor) -> list[list[int]]:
    """Connected components of an undirected graph given by a boolean adjacency matrix."""
    n = adjacent.shape[0]
    seen = torch.zeros(n, dtype=torch.bool)
    comps = []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            v = stack.pop()
            comp.append(v)
            for u in torch.nonzero(adjacent[v] & ~seen).flatten().tolist():
                seen[u] = True
                stack.append(u)
        comps.append(comp)
    return comps


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def fit_blockperm(basis: torch.Tensor, target: torch.Tensor, b: int) -> BlockFit:
    """Support (OMP + components), then one b x b orthogonal Procrustes per block (see module doc)."""
    n_in, n_out = basis.shape[1], target.shape[1]
    supports = sparse_supports(basis, target, b)
    votes = torch.zeros(n_in, n_out, dtype=torch.float64)
    votes[supports, torch.arange(n_out)[:, None].expand_as(supports)] = 1.0
    overlap = votes.T @ votes  # (n_out, n_out): shared support entries
    used = torch.zeros(n_in, dtype=torch.bool)
    r = torch.zeros(n_in, n_out, dtype=torch.float64)
    blocks = []
    basis, target = basis.to(torch.float64), target.to(torch.float64)
    for comp in _components(overlap >= b / 2):
        if len(comp) != b:
            continue
        g = torch.tensor(sorted(comp))
        s = torch.sort(torch.topk(votes[:, g].sum(1), b).indices).values
        if bool(used[s].any()):
            continue
        used[s] = True
        q = procrustes(basis[:, s], target[:, g])
        r[s[:, None], g[None, :]] = q
        blocks.append((s, g, q))
    return BlockFit(r, blocks)


def support_rate(fit: BlockFit, r_true: torch.Tensor) -> float:
    """Share of masked coordinates j whose recovered input set equals {i : R[i, j] != 0}."""
    true = r_true != 0
    est = torch.zeros_like(true)
    for s, g, _ in fit.blocks:
        est[s[:, None], g[None, :]] = True
    return float((est == true).all(dim=0).double().mean())


def mask_error(r_est: torch.Tensor, r_true: torch.Tensor) -> float:
    """Relative Frobenius error of a mask estimate."""
    return float((r_est - r_true).norm() / r_true.norm())


def _summary(vals: list[float]) -> dict[str, float | None]:
    return {"min": min(vals), "mean": sum(vals) / len(vals)} if vals else {"min": None, "mean": None}


def _side(spec: str, basis: torch.Tensor, target: torch.Tensor):
    """The attacker's structured estimate of a right-acting mask from ``target ~ basis @ R``: (R estimate,
    zero where nothing was recovered; which basis coordinates it covers; what was found: the BlockFit,
    the Kronecker labels, or None)."""
    fam = parse_masks(spec)
    n_in = basis.shape[1]
    if fam.kind == "blockperm":
        fit = fit_blockperm(basis, target, block_size(spec, target.shape[1]))
        covered = torch.zeros(n_in, dtype=torch.bool)
        for s_idx, _, _ in fit.blocks:
            covered[s_idx] = True
        return fit.r, covered, fit
    sizes = kron_factors(target.shape[1], int(fam.param))
    found = fit_kron(procrustes(basis.to(torch.float64), target.to(torch.float64)), sizes)
    if found is None:
        return (
            torch.zeros(n_in, target.shape[1], dtype=torch.float64),
            torch.zeros(n_in, dtype=torch.bool),
            None,
        )
    est, rows, cols = found
    return est, torch.ones(n_in, dtype=torch.bool), (rows, cols)


def _structure_score(found, true_mask) -> float:
    """Scoring only: support rate (blockperm) or share of Kronecker label partitions (kron) recovered."""
    if isinstance(found, BlockFit):
        return support_rate(found, true_mask.matrix().to(torch.float64))
    return 0.0 if found is None else kron_label_rate(*found, true_mask)


def kron_label_rate(rows, cols, true_mask) -> float:
    """Share of the 2k true label partitions (rows and columns per factor) of a KronMask that the
    recovered ones reproduce (scoring only)."""

    def coords(index: torch.Tensor) -> list[torch.Tensor]:
        out, rem = [], index.clone()
        for f in reversed(true_mask.sizes):
            out.append(rem % f)
            rem = rem // f
        return out

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())

    truth_rows = coords(torch.argsort(true_mask.p1))  # row i of R is row p1^-1[i] of the Kronecker product
    truth_cols = coords(true_mask.p2)  # column j of R is column p2[j]
    hits = sum(any(same(lab, t) for _, lab in rows) for t in truth_rows)
    hits += sum(any(same(lab, t) for _, lab in cols) for t in truth_cols)
    return hits / (len(truth_rows) + len(truth_cols))


@single_threaded()
def structure_attack(
    victim: Victim, decoded: list[torch.Tensor] | None = None, block: int = 0, plausible: float | None = 0.5
) -> dict:
    """rho per part of ``block`` from the structure of a ``blockperm`` or ``kron`` mask (not applicable to
    other families), with the structure recovery (support rate / Kronecker label share, scored against
    the true masks) and the mask error of every side fitted. Only structured estimates are used: a
    coordinate whose structure was not recovered keeps the public weight. Strict mode needs ``decoded``
    (the token attack's guesses) for the input side."""
    spec = victim.config.masks
    fam = parse_masks(spec)
    if fam.kind not in ("blockperm", "kron"):
        return {"applicable": False, "reason": f"{fam.kind} masks have no block or Kronecker structure"}
    groups = [g for g in victim.groups if g.block == block]
    plain = None
    if victim.config.mode == "strict":
        if decoded is None:
            raise ValueError("strict mode: the structure attack needs the decoded tokens")
        plain = decoded_input_pairs(victim, decoded, block, groups)
    rhos: dict[str, float] = {}
    supports: list[float] = []
    errors: list[float] = []
    for g in groups:
        sides = mask_sides(victim.config.mode, g.role)
        mask_in, masks_out = victim.masks[g.layer]  # scoring only
        r_in_hat = None
        if sides.input and sides.output:  # strict: the input mask from the activations
            x, x_star = plain[g.layer]
            r_in_hat, _, found = _side(spec, x, x_star)
            supports.append(_structure_score(found, mask_in))
            errors.append(mask_error(r_in_hat, victim.true_mask(g.layer)))
        for k, _ in enumerate(g.parts):
            w_star = victim.transcript.weights[(g.layer, k)].to(torch.float64)
            w_pub, w = victim.public_weight(g.layer, k), victim.true_weight(g.layer, k)
            if sides.output:  # a = W R_out
                a = w_star if r_in_hat is None else r_in_hat @ w_star
                r_hat, covered, found = _side(spec, w_pub, a)
                w_rec = torch.where(covered[None, :], a @ r_hat.T, w_pub)
                true_mask, r_true = masks_out[k], victim.true_mask(g.layer, k)
            else:  # input side only: W*^T = W^T R_in
                r_hat, covered, found = _side(spec, w_pub.T, w_star.T)
                w_rec = torch.where(covered[:, None], r_hat @ w_star, w_pub)
                true_mask, r_true = mask_in, victim.true_mask(g.layer)
            supports.append(_structure_score(found, true_mask))
            errors.append(mask_error(r_hat, r_true))
            rhos[f"{g.layer}/{k}"] = rho(_plausible(w_rec, w_pub, plausible), w, w_pub)
    return {
        "applicable": True,
        "rho": rhos,
        "support_recovery": _summary(supports),
        "mask_error": {"max": max(errors), "mean": sum(errors) / len(errors)},
    }


# --------------------------------------------------------------------------------------- kron


def _within_share(x: torch.Tensor, lab: torch.Tensor, f: int) -> torch.Tensor:
    """Per column of x, the share of its variance left within the groups of ``lab``."""
    means = torch.zeros(f, x.shape[1], dtype=x.dtype).index_add_(0, lab, x) / (x.shape[0] // f)
    within = (x - means[lab]).pow(2).sum(0)
    return within / (x - x.mean(0)).pow(2).sum(0).clamp_min(1e-300)


def _refine(x: torch.Tensor, lab: torch.Tensor, f: int, iters: int = 20) -> torch.Tensor | None:
    """Lloyd iterations from the groups of ``lab`` (k-means started at their means); None if a group
    stops having n/f rows."""
    n = x.shape[0]
    for _ in range(iters):
        centers = torch.zeros(f, x.shape[1], dtype=x.dtype).index_add_(0, lab, x) / (n // f)
        new = torch.cdist(x, centers).argmin(dim=1)
        if bool((new == lab).all()):
            break
        lab = new
        if not bool((torch.bincount(lab, minlength=f) == n // f).all()):
            return None
    return lab


def kron_labels(s: torch.Tensor, sizes: list[int], spare: int = 8, member: float = 0.05):
    """Per Kronecker factor, labels of the rows of a permuted Kronecker matrix from s = |C|^2 (ours).

    ``s s^T`` of ``|R_1|^2 (x) ... (x) |R_k|^2`` (doubly stochastic factors) is the Kronecker product of
    the factors' Gram matrices; among its leading non-constant eigenvectors are functions of one
    factor's index alone, whose values fall into f groups of n/f equal values. For every leading
    eigenvector and factor size f, its sorted values cut into f consecutive runs of n/f give a candidate
    partition; candidates are taken best first (least variance left within the groups), refined by
    k-means over every leading eigenvector nearly constant on its groups (within share below
    ``member``), and kept if consistent with those kept before (every pair of groups from two factors
    meets in n/(f_s f_t) rows). Returns [(f, labels)] for every factor, or None."""
    n = s.shape[0]
    m = min(n - 1, sum(f - 1 for f in sizes) + spare)
    evals, evecs = torch.linalg.eigh(s @ s.T)
    e = evecs[:, torch.argsort(evals, descending=True)][:, 1 : 1 + m]
    cands = []
    for f in sorted(set(sizes)):
        if n % f:
            return None
        order = torch.argsort(e, dim=0)  # (n, m)
        for k in range(m):
            lab = torch.empty(n, dtype=torch.long)
            lab[order[:, k]] = torch.arange(n) // (n // f)
            cands.append((float(_within_share(e[:, k : k + 1], lab, f)[0]), f, lab))
    cands.sort(key=lambda t: t[0])
    need = sorted(sizes)
    chosen: list[tuple[int, torch.Tensor]] = []
    for share, f, lab in cands:
        if f not in need or share > member:
            continue
        fam = _within_share(e, lab, f) < member
        lab = _refine(e[:, fam], lab, f)
        if lab is None:
            continue
        ok = True
        for g, other in chosen:
            counts = torch.zeros(f, g, dtype=torch.long)
            counts.index_put_((lab, other), torch.ones(n, dtype=torch.long), accumulate=True)
            if not bool((counts == n // (f * g)).all()):
                ok = False
                break
        if ok:
            chosen.append((f, lab))
            need.remove(f)
        if not need:
            return chosen
    return None


def _rank1(t: torch.Tensor, iters: int = 50) -> list[torch.Tensor]:
    """Best rank-1 approximation of a k-way tensor by higher-order power iteration (De Lathauwer et al.
    2000), started from each unfolding's leading singular vector; factors returned with the scale in the
    first one."""
    k = t.dim()
    vecs = []
    for mode in range(k):
        unf = t.movedim(mode, 0).reshape(t.shape[mode], -1)
        vecs.append(torch.linalg.svd(unf, full_matrices=False)[0][:, 0])
    for _ in range(iters if k > 2 else 1):
        for mode in range(k):
            r = t
            for other in reversed(range(k)):
                if other != mode:
                    r = r.movedim(other, -1) @ vecs[other]
            vecs[mode] = r / r.norm().clamp_min(1e-300)
    scale = t
    for mode in reversed(range(k)):
        scale = scale.movedim(mode, -1) @ vecs[mode]
    vecs[0] = vecs[0] * scale
    return vecs


def _polar(m: torch.Tensor) -> torch.Tensor:
    """Nearest orthogonal matrix (polar factor)."""
    u, _, vt = torch.linalg.svd(m)
    return u @ vt


def fit_kron(c: torch.Tensor, sizes: list[int]) -> torch.Tensor | None:
    """A Kronecker-structured orthogonal estimate of a ``kron`` mask from a dense estimate ``c`` (ours):
    row labels from ``|c|^2``, column labels from ``|c^T|^2``, each factor pairing of equal sizes tried;
    the factors from the best rank-1 approximation of ``c`` rearranged as a tensor (the nearest
    Kronecker product, Van Loan and Pitsianis 1993), made orthogonal; the pairing with the smallest
    distance to ``c`` wins. None when the labels are not found."""
    import itertools

    c = c.to(torch.float64)
    rows = kron_labels(c**2, sizes)
    cols = kron_labels((c**2).T, sizes)
    if rows is None or cols is None:
        return None
    best = None
    for perm in itertools.permutations(range(len(cols))):
        if any(rows[t][0] != cols[perm[t]][0] for t in range(len(rows))):
            continue
        fs = [f for f, _ in rows]
        # tensor T[(a_1, x_1), ..., (a_k, x_k)] = c[i, j] for the row / column with those labels
        ri = torch.zeros(c.shape[0], dtype=torch.long)
        cj = torch.zeros(c.shape[1], dtype=torch.long)
        for t, f in enumerate(fs):
            ri = ri * f + rows[t][1]
            cj = cj * f + cols[perm[t]][1]
        dense = torch.zeros_like(c)
        dense[ri[:, None], cj[None, :]] = c  # rows / columns in Kronecker order
        shape = fs + fs
        t4 = dense.reshape(shape)  # (a_1..a_k, x_1..x_k)
        order = [d for t in range(len(fs)) for d in (t, t + len(fs))]
        tens = t4.permute(order).reshape([f * f for f in fs])
        vecs = _rank1(tens)
        factors = [_polar(v.reshape(f, f)) for v, f in zip(vecs, fs, strict=True)]
        k = factors[0]
        for fct in factors[1:]:
            k = torch.kron(k, fct)
        est = k[ri[:, None], cj[None, :]]
        if float((est * c).sum()) < 0:
            est = -est
        err = float((est - c).norm())
        if best is None or err < best[0]:
            best = (err, est, [cols[perm[t]] for t in range(len(rows))])
    return None if best is None else (best[1], rows, best[2])
