"""Second-moment attack on block 0's static input mask from mixed rows (ours, no known text needed).

Row mixing sends ``z = sum_j m_j y_j`` over a group's rows ``y_j`` (the masked rows ``x R`` and a noise
row). The mixing matrices are drawn with a sign-symmetric distribution, so the cross terms vanish in
expectation and every row of the group gets the same weight:

    E[z^T z] ~ R^T (Sigma_x + s^2 I) R          (noise rows isotropic, orthogonal R)

The public model gives ``Sigma_x``: the candidate table ``RMSNorm(E[t]) g`` weighted by the unigram
prior of public text. So the eigenvectors of the received rows' second moment are ``R^T`` times those
of ``Sigma_x``, up to one sign per eigenvector, and ``R ~ V_x D U_z^T`` with an unknown sign matrix D.

What limits it: (1) the 2^d signs (odd moments of mixed rows vanish, so no moment fixes them) and
(2) the sample: eigenvectors are only as good as the gaps between neighbouring eigenvalues allow, and
the victim's own tokens are not the public prior. The attack is scored generously: with the *best*
signs (chosen with the true mask, scoring only), which bounds what any sign search could reach.
"""

from __future__ import annotations

import torch

from p3eft.attacks.structured import mask_error
from p3eft.attacks.victim import Victim
from p3eft.obfuscatune.masks import single_threaded
from p3eft.obfuscatune.split import mask_sides

LAYER = "h.0.attn_in"


def public_second_moment(cands: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``sum_v p(v) c_v^T c_v``: the expected second moment of block 0's first plaintext rows."""
    return (cands * prior.unsqueeze(1)).T @ cands


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def eigen_mask(received: torch.Tensor, sigma_x: torch.Tensor, r_true: torch.Tensor) -> dict:
    """The eigenvector estimate ``V_x D U_z^T`` with the best signs D (scoring), and how well each
    eigenvector matched (|cos| between ``R^T v_i`` and ``u_i``, sign-free)."""
    sz = received.T @ received / max(len(received), 1)
    _, uz = torch.linalg.eigh(sz)
    _, vx = torch.linalg.eigh(sigma_x)
    cos = torch.einsum("di,di->i", r_true.T @ vx, uz)  # scoring: column i of R^T V_x against u_i
    d = torch.where(cos >= 0, 1.0, -1.0).to(vx.dtype)
    est = (vx * d) @ uz.T
    return {
        "mask_error_best_signs": mask_error(est, r_true),
        "mean_abs_cos": float(cos.abs().mean()),
        "eigvecs_within_0.99": int((cos.abs() >= 0.99).sum()),
        "rows": len(received),
    }


def covariance_attack(victim: Victim, prior: torch.Tensor, cands: torch.Tensor) -> dict:
    """Every row block 0's attention input received, against the public second moment."""
    if not mask_sides(victim.config.mode, "attn_in").input:
        return {"applicable": False}
    rows = torch.cat(
        [
            c.sent[0].reshape(-1, c.sent[0].shape[-1]).to(torch.float64)
            for c in victim.transcript.forwards(LAYER)
        ]
    )
    out = eigen_mask(rows, public_second_moment(cands, prior), victim.true_mask(LAYER))
    out["applicable"] = True
    return out
