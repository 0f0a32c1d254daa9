"""Loss-span leakage: which positions carry a label, read off the backward traffic.

In a causal LM the gradient reaching the last block's output projection at position t is zero
unless position t predicts a labelled token (HF shifts: logits[t] vs labels[t+1]). A mask multiplies
rows by a matrix and keeps zero rows zero, so the untrusted side reads the loss span (for a QA
fine-tune: where the answer is) from the rows' norms. Metric: accuracy of "row j carries loss" as a
prediction for position j, against always guessing the majority class.
"""

from __future__ import annotations

import torch

from p3eft.attacks.victim import Victim


def loss_span_attack(victim: Victim) -> dict[str, float] | None:
    """Accuracy of reading the loss span from the last block's backward traffic (None: no training)."""
    train = victim.traffic.train
    if train is None:
        return None
    last = f"h.{victim.num_blocks - 1}.mlp_out"
    crossings = victim.transcript.backwards(last)
    if not crossings:
        return None
    g = crossings[0].sent[0]
    rows = g.reshape(-1, g.shape[-1]).to(torch.float64).norm(dim=1)
    predicted = rows > 1e-6 * float(rows.max() if rows.numel() else 1.0)
    labels, valid = train["labels"], train["attention_mask"].bool()
    truth = torch.zeros_like(valid)
    truth[:, :-1] = labels[:, 1:] != -100
    truth, valid = truth.flatten(), valid.flatten()
    m = min(len(predicted), len(truth))
    pred = torch.zeros_like(truth)
    pred[:m] = predicted[:m]
    n = int(valid.sum())
    acc = float(((pred == truth) & valid).sum()) / n
    pos = float((truth & valid).sum()) / n
    return {"loss_span_accuracy": acc, "majority_baseline": max(pos, 1 - pos), "positions": n}
