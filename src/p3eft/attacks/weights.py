"""Weight recovery by the untrusted side, scored as the share of the proprietary delta it learns.

``rho = 1 - ||W_rec - W|| / ||W_pub - W||`` (ours): 0 means no better than the public base model
(which the attacker has anyway), 1 means the proprietary weight exactly; negative is worse than public.

* **weights alone**: an orthogonal mask keeps the spectrum. Two-sided (strict): align the singular
  vectors with the public weight's, ``W_rec = U_pub diag(sigma(W*)) V_pub^T``. One-sided (paper):
  orthogonal Procrustes of ``W*`` onto ``W_pub`` from the masked side, ``W_rec = Q W*`` or ``W* Q``.
* **weights plus activations** (known plaintext): the attacker runs the public model on the tokens it
  decoded (see :mod:`p3eft.attacks.tokens`) to estimate each recorded group's plaintext input X, fits
  the input mask from ``(X, X*)`` (Procrustes for orthogonal families, least squares otherwise), takes
  ``R_in W* = W R_out`` and, if the output side is masked, Procrustes onto ``W_pub`` from the right.
* **rows needed**: with *known* plaintext (the true prompt, as for a known document), the number of
  rows after which the fitted input mask predicts held-out masked rows to 1% relative error.
"""

from __future__ import annotations

import torch

from p3eft.attacks.tokens import candidate_table, procrustes
from p3eft.attacks.victim import Victim
from p3eft.obfuscatune.masks import parse_masks, single_threaded
from p3eft.obfuscatune.split import mask_sides

ORTHOGONAL_FAMILIES = ("orthogonal", "kron", "blockperm")


def rho(w_rec: torch.Tensor, w: torch.Tensor, w_pub: torch.Tensor) -> float:
    """Share of the proprietary delta learned: 1 - ||W_rec - W|| / ||W_pub - W||."""
    return 1.0 - float((w_rec - w).norm() / (w_pub - w).norm())


def _fit_mask(x: torch.Tensor, x_star: torch.Tensor, orthogonal: bool) -> torch.Tensor:
    """R with x R ~ x* (orthogonal Procrustes, or least squares)."""
    if orthogonal:
        return procrustes(x, x_star)
    return torch.linalg.lstsq(x, x_star).solution


def _recover(w_star: torch.Tensor, w_pub: torch.Tensor, sides, r_in: torch.Tensor | None) -> torch.Tensor:
    """Best estimate of W from W* given (maybe) an estimate of the input mask."""
    if sides.input and sides.output:
        if r_in is None:  # two-sided, weights alone: keep the spectrum, take the public singular vectors
            u, _, vt = torch.linalg.svd(w_pub, full_matrices=False)
            s = torch.linalg.svdvals(w_star)
            return u @ torch.diag(s) @ vt
        left = r_in @ w_star  # = W R_out
        return left @ procrustes(left, w_pub)
    if sides.input:  # W* = R_in^-1 W
        if r_in is not None:
            return r_in @ w_star
        return procrustes(w_star.T, w_pub.T).T @ w_star
    return w_star @ procrustes(w_star, w_pub)  # W* = W R_out


def _plausible(w_rec: torch.Tensor, w_pub: torch.Tensor, plausible: float | None) -> torch.Tensor:
    """Ours: an estimate farther than ``plausible`` (relative) from the public weight is discarded for the
    public weight itself (rho 0): a fine-tune is a small change, so the attacker knows it failed."""
    if plausible is not None and float((w_rec - w_pub).norm()) > plausible * float(w_pub.norm()):
        return w_pub
    return w_rec


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def weights_alone(victim: Victim, block: int = 0, plausible: float | None = 0.5) -> dict[str, float]:
    """rho per part of ``block`` from the obfuscated weights only."""
    out = {}
    for g in [g for g in victim.groups if g.block == block]:
        sides = mask_sides(victim.config.mode, g.role)
        for k, _ in enumerate(g.parts):
            w_star = victim.transcript.weights[(g.layer, k)].to(torch.float64)
            w_pub, w = victim.public_weight(g.layer, k), victim.true_weight(g.layer, k)
            w_rec = _plausible(_recover(w_star, w_pub, sides, None), w_pub, plausible)
            out[f"{g.layer}/{k}"] = rho(w_rec, w, w_pub)
    return out


def _public_inputs(victim: Victim, token_batches: list[torch.Tensor], masks: list[torch.Tensor], block: int):
    """Plaintext inputs of each group of ``block`` when the *public* model reads the given tokens."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for g in [g for g in victim.groups if g.block == block]:
        module = victim.public.get_submodule(g.parts[0].path)

        def hook(mod, args, layer=g.layer):
            seen.setdefault(layer, []).append(
                args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            )

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids, mask in zip(token_batches, masks, strict=True):
                victim.public(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return seen


def decoded_input_pairs(victim: Victim, decoded: list[torch.Tensor], block: int, groups) -> dict:
    """Per group of ``groups`` (all in ``block``): (X, X*), the group's plaintext input estimated by running
    the public model on the attacker's decoded tokens (``decoded[i]``: one guess per crossing row of call
    i, row j read as position j), and the masked input the cloud received, cut to equal row counts."""
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
    for g in groups:
        xs, xstars = [], []
        for c, x in zip(victim.transcript.forwards(g.layer), plain[g.layer], strict=True):
            x_star = c.sent[0].reshape(-1, c.sent[0].shape[-1]).to(torch.float64)
            m = min(len(x), len(x_star))
            xs.append(x[:m])
            xstars.append(x_star[:m])
        out[g.layer] = (torch.cat(xs), torch.cat(xstars))
    return out


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def known_plaintext_weights(
    victim: Victim, decoded: list[torch.Tensor], block: int = 0, plausible: float | None = 0.5
) -> dict[str, float]:
    """rho per part of ``block`` from the weights plus the activations, the plaintext estimated from the
    attacker's decoded tokens (``decoded[i]``: one guess per crossing row of call i, row j read as position j)."""
    groups = [g for g in victim.groups if g.block == block]
    masked_in = [g for g in groups if mask_sides(victim.config.mode, g.role).input]
    pairs = decoded_input_pairs(victim, decoded, block, masked_in)
    orthogonal = parse_masks(victim.config.masks).kind in ORTHOGONAL_FAMILIES
    out = {}
    for g in groups:
        sides = mask_sides(victim.config.mode, g.role)
        r_in = _fit_mask(*pairs[g.layer], orthogonal) if sides.input else None
        for k, _ in enumerate(g.parts):
            w_star = victim.transcript.weights[(g.layer, k)].to(torch.float64)
            w_pub, w = victim.public_weight(g.layer, k), victim.true_weight(g.layer, k)
            w_rec = _plausible(_recover(w_star, w_pub, sides, r_in), w_pub, plausible)
            out[f"{g.layer}/{k}"] = rho(w_rec, w, w_pub)
    return out


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def rows_needed(victim: Victim, *, target: float = 0.01) -> dict[str, float | int | None]:
    """Known plaintext (the true prompts): rows of block 0's first input after which the fitted mask
    predicts held-out masked rows to ``target`` relative error (None: not within the rows available)."""
    sides = mask_sides(victim.config.mode, "attn_in")
    if not sides.input:
        return {"rows_needed": 0, "rows_available": 0, "final_error": 0.0}
    cands = candidate_table(victim.public)
    xs, xstars = [], []
    for c, call in zip(victim.transcript.forwards("h.0.attn_in"), victim.traffic.calls(), strict=True):
        x = cands[call["input_ids"].flatten()]
        x_star = c.sent[0].reshape(-1, c.sent[0].shape[-1]).to(torch.float64)
        m = min(len(x), len(x_star))
        xs.append(x[:m])
        xstars.append(x_star[:m])
    x, x_star = torch.cat(xs), torch.cat(xstars)
    hold = max(16, len(x) // 8)
    train, test = slice(0, len(x) - hold), slice(len(x) - hold, len(x))
    orthogonal = parse_masks(victim.config.masks).kind in ORTHOGONAL_FAMILIES
    n, needed, err = 8, None, float("nan")
    available = len(x) - hold
    while True:
        n = min(n, available)
        r = _fit_mask(x[train][:n], x_star[train][:n], orthogonal)
        err = float((x[test] @ r - x_star[test]).norm() / x_star[test].norm())
        if err <= target:
            needed = n
            break
        if n >= available:
            break
        n *= 2
    return {"rows_needed": needed, "rows_available": available, "final_error": err}
