"""Structure-aware weight recovery: a ``blockperm`` mask gives its support away (ours, after Procrustes-style
recovery of permuted/orthogonal obfuscation).

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
only m B(B-1)/2, so the recovered ``W`` keeps almost all of the delta. Metrics: rho per weight (as in
:mod:`p3eft.attacks.weights`), the share of masked coordinates whose support was recovered exactly, and
the relative error of the recovered mask, both scored against the victim's true masks.

Kronecker masks (``kron``) are dense between their permutations; this module does not attack their
structure (see the docs' limits). Other families are reported as not applicable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from p3eft.attacks.tokens import procrustes
from p3eft.attacks.victim import Victim
from p3eft.attacks.weights import _plausible, _public_inputs, rho
from p3eft.obfuscatune.masks import parse_masks, single_threaded
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


def recover_right(a: torch.Tensor, w_pub: torch.Tensor, b: int) -> tuple[torch.Tensor, BlockFit]:
    """``a ~ W R`` with R blockperm: W's columns of every recovered block from ``a[:, G] B^T``; the public
    columns where no block was recovered."""
    fit = fit_blockperm(w_pub, a, b)
    w_rec = w_pub.clone()
    for s, g, q in fit.blocks:
        w_rec[:, s] = a[:, g].to(torch.float64) @ q.T
    return w_rec, fit


def _summary(vals: list[float]) -> dict[str, float | None]:
    return {"min": min(vals), "mean": sum(vals) / len(vals)} if vals else {"min": None, "mean": None}


@single_threaded()
def structure_attack(
    victim: Victim, decoded: list[torch.Tensor] | None = None, block: int = 0, plausible: float | None = 0.5
) -> dict:
    """rho per part of ``block`` from the structure of a ``blockperm`` mask (None-valued when the mask
    family is not blockperm), with the support-recovery rate and mask error of every side fitted.
    Strict mode needs ``decoded`` (the token attack's guesses) for the input side."""
    fam = parse_masks(victim.config.masks)
    if fam.kind != "blockperm":
        return {"applicable": False, "reason": f"{fam.kind} masks have no block support to recover"}
    groups = [g for g in victim.groups if g.block == block]
    plain = None
    if victim.config.mode == "strict":
        if decoded is None:
            raise ValueError("strict mode: the structure attack needs the decoded tokens")
        plain = _decoded_inputs(victim, decoded, block)
    rhos: dict[str, float] = {}
    supports: list[float] = []
    errors: list[float] = []
    for g in groups:
        sides = mask_sides(victim.config.mode, g.role)
        r_in_hat = None
        if sides.input and sides.output:  # strict: the input mask from the activations
            x, x_star = plain[g.layer]
            n = x.shape[1]
            fit_in = fit_blockperm(x, x_star, block_size(victim.config.masks, n))
            r_in_hat = fit_in.r
            r_true = victim.true_mask(g.layer)
            supports.append(support_rate(fit_in, r_true))
            errors.append(mask_error(fit_in.r, r_true))
        for k, _ in enumerate(g.parts):
            w_star = victim.transcript.weights[(g.layer, k)].to(torch.float64)
            w_pub, w = victim.public_weight(g.layer, k), victim.true_weight(g.layer, k)
            if sides.output:
                a = w_star if r_in_hat is None else r_in_hat @ w_star  # ~ W R_out
                w_rec, fit = recover_right(a, w_pub, block_size(victim.config.masks, w_pub.shape[1]))
                r_true = victim.true_mask(g.layer, k)
            else:  # input side only: W*^T = W^T R_in
                w_rec_t, fit = recover_right(
                    w_star.T, w_pub.T, block_size(victim.config.masks, w_pub.shape[0])
                )
                w_rec = w_rec_t.T
                r_true = victim.true_mask(g.layer)
            supports.append(support_rate(fit, r_true))
            errors.append(mask_error(fit.r, r_true))
            rhos[f"{g.layer}/{k}"] = rho(_plausible(w_rec, w_pub, plausible), w, w_pub)
    return {
        "applicable": True,
        "rho": rhos,
        "support_recovery": _summary(supports),
        "mask_error": {"max": max(errors), "mean": sum(errors) / len(errors)},
    }


def _decoded_inputs(victim: Victim, decoded: list[torch.Tensor], block: int):
    """Per group of ``block``: (X estimated from the decoded tokens through the public model, X* sent)."""
    calls = victim.traffic.calls()
    batches = []
    for guess, call in zip(decoded, calls, strict=True):
        ids = call["input_ids"]
        flat = torch.zeros(ids.numel(), dtype=torch.long)
        m = min(len(guess), ids.numel())
        flat[:m] = guess[:m]
        batches.append(flat.reshape(ids.shape))
    plain = _public_inputs(victim, batches, [c["attention_mask"] for c in calls], block)
    out = {}
    for g in [g for g in victim.groups if g.block == block]:
        xs, xstars = [], []
        for c, x in zip(victim.transcript.forwards(g.layer), plain[g.layer], strict=True):
            x_star = c.sent[0].reshape(-1, c.sent[0].shape[-1]).to(torch.float64)
            m = min(len(x), len(x_star))
            xs.append(x[:m])
            xstars.append(x_star[:m])
        out[g.layer] = (torch.cat(xs), torch.cat(xstars))
    return out
