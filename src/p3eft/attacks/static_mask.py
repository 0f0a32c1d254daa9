"""Known-plaintext and many-call estimation of the *static* input mask of block 0 (ours).

A session's masks do not change between calls, so an attacker that knows the plaintext of some rows
(a public prefix, a known document, or the tokens it decoded from earlier calls) can fit the mask and
then read every later call with one product. Block 0's first input is ``RMSNorm(E[t]) g``, which the
attacker computes from the public model for every known token (the candidate table of
:mod:`p3eft.attacks.tokens`). Two estimators, each accumulating over the calls in order:

* **aligned rows**: row j of a call is taken as the masked image of the call's j-th known token (true
  when the enclave sends rows in order, i.e. without row mixing); the mask is fitted after n rows
  (orthogonal Procrustes for orthogonal families, least squares otherwise; ``blockperm`` masks use the
  block fit of :mod:`p3eft.attacks.structured`, which needs fewer rows). Reported: the fewest rows
  (x sqrt(2) steps, then bisection) after which the fitted mask is within ``target`` (relative Frobenius
  error) of the true one.
* **matched rows** (many calls, order unknown): the attacker knows which tokens a call holds but not
  which row is which; every observed row is matched to a known token by norm and Gram matching
  (:func:`p3eft.attacks.tokens.recover_rows` with the call's known tokens as the only candidates), the
  attacker keeps the matches whose norms agree (it can check that itself), pools them over calls and
  fits the mask by Procrustes after each call. Orthogonal families only (it relies on kept norms).
  Reported: the calls needed to reach ``target``.

Fresh per-call row mixing (``mix:K``) sends combinations of rows plus a noise row: no observed row is a
masked known row, so neither estimator finds pairs to fit. The mask error is scored against the
victim's true mask (scoring only; the attacker never sees it).
"""

from __future__ import annotations

import math

import torch

from p3eft.attacks.structured import block_size, fit_blockperm, mask_error
from p3eft.attacks.tokens import candidate_table, procrustes, recover_rows
from p3eft.attacks.victim import Victim
from p3eft.attacks.weights import ORTHOGONAL_FAMILIES
from p3eft.obfuscatune.masks import parse_masks, single_threaded
from p3eft.obfuscatune.split import mask_sides

LAYER = "h.0.attn_in"
NORM_TOL = 3e-5  # ours: the token attack's norm tolerance; a pair whose norms disagree more is dropped


def _calls(victim: Victim, cands: torch.Tensor):
    """Per call: (known plaintext rows in position order, known token ids, observed masked rows)."""
    out = []
    for c, call in zip(victim.transcript.forwards(LAYER), victim.traffic.calls(), strict=True):
        ids = call["input_ids"].flatten()
        out.append((cands[ids], ids, c.sent[0].reshape(-1, c.sent[0].shape[-1]).to(torch.float64)))
    return out


def _fit(x: torch.Tensor, x_star: torch.Tensor, masks: str) -> torch.Tensor:
    """The attacker's mask estimate from pairs ``x R ~ x*`` (structure used where the family has one)."""
    fam = parse_masks(masks)
    b = block_size(masks, x.shape[1])
    if b is not None and b < x.shape[1] and len(x) >= b:
        fit = fit_blockperm(x, x_star, b)
        if bool(fit.covered.all()):
            return fit.r
    if fam.kind in ORTHOGONAL_FAMILIES:
        return procrustes(x, x_star)
    return torch.linalg.lstsq(x, x_star).solution


def _schedule(available: int, start: int = 8) -> list[int]:
    """Row counts to try: start, then x sqrt(2) each step, up to everything available."""
    ns, n = [], float(start)
    while int(n) < available:
        ns.append(int(n))
        n *= math.sqrt(2)
    return ns + [available]


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def aligned_rows(victim: Victim, cands: torch.Tensor | None = None, *, target: float = 1e-3) -> dict:
    """Known rows needed (in call order) until the fitted input mask is within ``target`` of the true one."""
    if not mask_sides(victim.config.mode, "attn_in").input:
        return {"rows_needed": None, "rows_available": 0, "mask_error": None, "curve": []}
    cands = candidate_table(victim.public) if cands is None else cands
    xs, xstars = [], []
    for x, _, x_star in _calls(victim, cands):
        m = min(len(x), len(x_star))
        xs.append(x[:m])
        xstars.append(x_star[:m])
    x, x_star = torch.cat(xs), torch.cat(xstars)
    r_true = victim.true_mask(LAYER)

    def error(n: int) -> float:
        return mask_error(_fit(x[:n], x_star[:n], victim.config.masks), r_true)

    curve, needed, err, below = [], None, float("nan"), 0
    for n in _schedule(len(x)):
        err = error(n)
        curve.append([n, err])
        if err <= target:
            needed = n
            break
        below = n
    while needed is not None and needed - below > 1:  # bisect between the last miss and the first hit
        mid = (below + needed) // 2
        e = error(mid)
        curve.append([mid, e])
        if e <= target:
            needed, err = mid, e
        else:
            below = mid
    curve.sort()
    return {"rows_needed": needed, "rows_available": len(x), "mask_error": err, "curve": curve}


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def matched_calls(victim: Victim, cands: torch.Tensor | None = None, *, target: float = 1e-3) -> dict:
    """Calls needed until a mask fitted on norm/Gram-matched rows, pooled over calls, is within ``target``."""
    fam = parse_masks(victim.config.masks)
    if not mask_sides(victim.config.mode, "attn_in").input or fam.kind not in ORTHOGONAL_FAMILIES:
        return {"applicable": False, "calls_needed": None, "calls": 0, "mask_error": [], "pairs": []}
    cands = candidate_table(victim.public) if cands is None else cands
    r_true = victim.true_mask(LAYER)
    px, pstar, errors, pairs, needed = [], [], [], [], None
    for i, (_, ids, x_star) in enumerate(_calls(victim, cands)):
        known = torch.unique(ids)
        table = cands[known]
        guess = recover_rows(x_star, table)
        x = table[guess]
        keep = (x_star.norm(dim=1) - x.norm(dim=1)).abs() <= NORM_TOL * x.norm(dim=1)
        px.append(x[keep])
        pstar.append(x_star[keep])
        xa, xsa = torch.cat(px), torch.cat(pstar)
        pairs.append(len(xa))
        err = mask_error(procrustes(xa, xsa), r_true) if len(xa) else None  # None: no pair to fit on
        errors.append(err)
        if needed is None and err is not None and err <= target:
            needed = i + 1
    return {
        "applicable": True,
        "calls_needed": needed,
        "calls": len(errors),
        "mask_error": errors,
        "pairs": pairs,
    }


def static_mask_attack(victim: Victim, cands: torch.Tensor | None = None, *, target: float = 1e-3) -> dict:
    cands = candidate_table(victim.public) if cands is None else cands
    return {
        "target": target,
        "aligned": aligned_rows(victim, cands, target=target),
        "matched": matched_calls(victim, cands, target=target),
    }
