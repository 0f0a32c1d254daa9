"""Prompt recovery from the first masked activation, using only the public model.

In a Llama-family model the first vector that crosses the boundary (input of block 0's Q/K/V) is
``RMSNorm(E[t]) * g``: it depends only on the token t, and the attacker can compute it for the whole
vocabulary from the public model (the *candidate table*). An orthogonal mask keeps norms and inner
products, so (ours, after published attacks on linear obfuscation):

1. **norms**: a row's norm selects the candidates of (almost) equal norm; a unique one is an *anchor*;
2. **Gram matching**: a row's inner products with the anchors' rows must equal its candidate's inner
   products with the anchors' candidates; the best match becomes a new anchor (iterated);
3. **Procrustes**: the orthogonal map from the anchors' masked rows to their candidates decodes every
   remaining row by its nearest candidate.

Paper mode's clear Q (output of ``q_proj``) is attacked directly: the nearest public query vector
``c_v W_q,pub`` names the token.
Metric: token accuracy over the real (non-padding) positions, against a unigram-prior guesser.
"""

from __future__ import annotations

from collections import Counter

import torch

from p3eft.attacks.victim import Victim
from p3eft.errors import P3eftError
from p3eft.obfuscatune.masks import single_threaded


def candidate_table(public: torch.nn.Module) -> torch.Tensor:
    """``RMSNorm(E[v]) * g`` of block 0 for every token v (float64): what each token sends first."""
    if getattr(public.config, "model_type", None) not in ("llama", "mistral", "qwen2"):
        raise P3eftError(
            "the token attack supports the Llama family (the first crossing depends on the token only)"
        )
    emb = public.get_input_embeddings().weight.detach().to(torch.float64)
    norm = public.model.layers[0].input_layernorm
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    rms = torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + eps)
    return emb * rms * norm.weight.detach().to(torch.float64)


def procrustes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Orthogonal Q minimising ||a Q - b|| (Schoenemann 1966: Q = U V^T of svd(a^T b))."""
    u, _, vt = torch.linalg.svd(a.T @ b, full_matrices=False)
    return u @ vt


def _nearest(x: torch.Tensor, cands: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of the nearest candidate (Euclidean) for every row of x."""
    sq = cands.pow(2).sum(-1)
    out = []
    for i in range(0, x.shape[0], chunk):
        out.append((2 * x[i : i + chunk] @ cands.T - sq).argmax(dim=-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@single_threaded()  # LAPACK on a shared CPU: threads oversubscribe (see masks.py)
def recover_rows(
    rows: torch.Tensor,
    cands: torch.Tensor,
    *,
    tol: float = 3e-5,
    ip_tol: float = 1e-3,
    max_anchors: int = 128,
) -> torch.Tensor:
    """Guess a token for every masked row (norm matching, Gram matching against anchors, Procrustes)."""
    rows = rows.to(torch.float64)
    n = rows.shape[0]
    nr, nc = rows.norm(dim=1), cands.norm(dim=1)
    order = torch.argsort(nc)
    ncs = nc[order]
    lo = torch.searchsorted(ncs, nr * (1 - tol))
    hi = torch.searchsorted(ncs, nr * (1 + tol), right=True)
    sets = [order[int(a) : int(b)] for a, b in zip(lo, hi, strict=True)]
    guess = torch.full((n,), -1, dtype=torch.long)
    for i, s in enumerate(sets):
        if len(s) == 1:
            guess[i] = s[0]
    for _ in range(6):  # Gram matching against the anchors found so far
        anchors = torch.nonzero(guess >= 0).flatten()[:max_anchors]
        if len(anchors) == 0:
            break
        ca = cands[guess[anchors]]
        g_obs = rows @ rows[anchors].T
        new = 0
        for i in torch.nonzero(guess < 0).flatten().tolist():
            s = sets[i]
            if len(s) == 0:
                continue
            err = (cands[s] @ ca.T - g_obs[i]).norm(dim=1) / (nr[i] * ca.norm(dim=1).norm() + 1e-30)
            best = int(err.argmin())
            if float(err[best]) < ip_tol:
                guess[i] = s[best]
                new += 1
        if new == 0:
            break
    anchors = torch.nonzero(guess >= 0).flatten()
    rest = torch.nonzero(guess < 0).flatten()
    if len(rest):
        if len(anchors) >= 2:
            q = procrustes(rows[anchors], cands[guess[anchors]])
            guess[rest] = _nearest(rows[rest] @ q, cands)
        else:  # nothing to anchor on: nearest candidate by norm alone
            guess[rest] = order[torch.clamp(lo[rest], max=len(order) - 1)]
    return guess


def unigram_prior(token_lists: list[list[int]], vocab: int) -> torch.Tensor:
    """Token frequencies of public text (add-one smoothed), the baseline guesser's prior."""
    counts = torch.ones(vocab, dtype=torch.float64)
    for ids in token_lists:
        for t in ids:
            counts[t] += 1
    return counts / counts.sum()


def score(
    guesses: list[torch.Tensor], truths: list[torch.Tensor], valid: list[torch.Tensor], prior: torch.Tensor
) -> dict:
    """Position accuracy (row i of a call is read as position i) and bag-of-tokens recall (order ignored,
    generous to the attacker), each with its unigram-prior baseline."""
    hit = total = 0
    bag_hit = bag_base = 0.0
    top = int(prior.argmax())
    base_hit = 0
    for g, t, v in zip(guesses, truths, valid, strict=True):
        t, v = t.flatten(), v.flatten().bool()
        m = min(len(g), len(t))
        aligned = torch.zeros_like(v)
        aligned[:m] = g[:m] == t[:m]
        hit += int((aligned & v).sum())
        total += int(v.sum())
        base_hit += int(((t == top) & v).sum())
        true_bag = Counter(t[v].tolist())
        nv = int(v.sum())
        guess_bag = Counter(g[:m][v[:m]].tolist()) if m else Counter()
        bag_hit += sum(min(c, true_bag.get(k, 0)) for k, c in guess_bag.items())
        bag_base += expected_bag_hits(prior, true_bag, nv)
    total = max(total, 1)
    return {
        "token_recovery": hit / total,
        "unigram_baseline": base_hit / total,
        "bag_recall": bag_hit / total,
        "bag_unigram_baseline": bag_base / total,
        "positions": total,
    }


def expected_bag_hits(prior: torch.Tensor, true_bag: Counter, n: int) -> float:
    """Expected bag hits of n i.i.d. guesses from the prior: sum over true tokens v of
    E[min(N_v, c_v)] = sum_{j=1..c_v} P(N_v >= j), N_v ~ Binomial(n, p_v)."""
    total = 0.0
    for v, c in true_bag.items():
        binom = torch.distributions.Binomial(total_count=n, probs=prior[v].clamp(1e-12, 1 - 1e-12))
        below = binom.log_prob(torch.arange(c, dtype=torch.float64)).exp().cumsum(0)  # P(N <= j-1)
        total += float((1.0 - below).clamp(min=0).sum())
    return total


def _calls_with_truth(victim: Victim, layer: str):
    crossings = victim.transcript.forwards(layer)
    calls = victim.traffic.calls()
    if len(crossings) != len(calls):
        raise P3eftError(f"{layer}: {len(crossings)} crossings for {len(calls)} calls")
    return crossings, calls


def gram_attack(victim: Victim, prior: torch.Tensor, cands: torch.Tensor | None = None) -> dict:
    """Norm + Gram + Procrustes attack on block 0's masked input (every call, no known text)."""
    cands = candidate_table(victim.public) if cands is None else cands
    crossings, calls = _calls_with_truth(victim, "h.0.attn_in")
    guesses = [recover_rows(c.sent[0].reshape(-1, c.sent[0].shape[-1]), cands) for c in crossings]
    out = score(guesses, [c["input_ids"] for c in calls], [c["attention_mask"] for c in calls], prior)
    out["guesses"] = guesses
    return out


def qkv_attack(victim: Victim, prior: torch.Tensor, cands: torch.Tensor | None = None) -> dict:
    """Paper mode's clear Q: the nearest public query vector ``c_v W_q,pub``."""
    cands = candidate_table(victim.public) if cands is None else cands
    crossings, calls = _calls_with_truth(victim, "h.0.attn_in")
    cq = cands @ victim.public_weight("h.0.attn_in", 0)  # every token's public query vector
    guesses = []
    for c in crossings:
        q = c.answered[0].reshape(-1, c.answered[0].shape[-1]).to(torch.float64)
        guesses.append(_nearest(q, cq))
    return score(guesses, [c["input_ids"] for c in calls], [c["attention_mask"] for c in calls], prior)
