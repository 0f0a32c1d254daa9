"""The classifier's input standardized per feature by public constants (ours, not the paper's).

Why: minilm-l6's first token is an attention sink, so its pooled features hardly depend on the
sentence (spread about 2e-4 around means near 0.06). A linear head on them is ill-conditioned by
orders of magnitude and plain SGD -- the only update the encrypted protocol runs -- moves only the
bias-like direction: it stays on one class (docs/privtuner.md). With the head's input standardized,
``feat = (pooled - mean) * inv_std``, SGD on the head leaves the one-class solution.

How it stays one model: the standardization is a *reparametrization* of the head. The head's
parameters are trained in standardized coordinates, ``W_std = W * std`` and ``b_std = b + W @ mean``,
so the logits are unchanged at initialisation (the exact twin still equals transformers), and the
data owner folds them back (``W = W_std * inv_std``, ``b = b_std - W @ mean``) when it exports a plain
PEFT adapter. Only the gradient's geometry changes.

Whose statistics: the model owner computes ``mean`` and ``inv_std`` on its calibration text (public
or proxy sentences, never a data owner's) with the approximate twin at the initial adapter, the
same function the encrypted path evaluates, so a systematic approximation offset is removed too. They
are public and travel in the session setup; they describe the model's response to public text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from p3eft.errors import ProtocolError

# a feature whose spread is below this fraction of the median spread is not amplified further (ours):
# it carries (numerically) no signal, and a huge factor would only amplify approximation noise
MIN_RELATIVE_STD = 1e-3


@dataclass(frozen=True)
class HeadStandardizer:
    """Per-feature ``mean`` and ``inv_std`` of the pooled features, each of the model's hidden size."""

    mean: np.ndarray
    inv_std: np.ndarray

    @classmethod
    def from_features(cls, feats: np.ndarray) -> HeadStandardizer:
        """From pooled features, one row per calibration example (at least two)."""
        f = np.asarray(feats, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError("standardizing the head needs the features of at least two examples")
        sd = f.std(axis=0)
        floor = MIN_RELATIVE_STD * float(np.median(sd)) if np.any(sd > 0) else 1.0
        return cls(f.mean(axis=0), 1.0 / np.maximum(sd, max(floor, 1e-300)))

    @property
    def hidden(self) -> int:
        return int(self.mean.shape[0])

    def row0(self, values: np.ndarray, seq: int, width: int) -> np.ndarray:
        """``values`` in row 0 of a (seq, width) plaintext, zeros elsewhere (the head reads row 0)."""
        out = np.zeros((seq, width))
        out[0, : self.hidden] = values
        return out

    # ----- the reparametrization (module doc) ------------------------------------------------------
    def to_standardized(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plain head (labels x hidden, labels) -> the head in standardized coordinates."""
        w = np.asarray(w, dtype=np.float64)
        return w / self.inv_std[None, :], np.asarray(b, dtype=np.float64) + w @ self.mean

    def to_plain(self, w_std: np.ndarray, b_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`to_standardized`: the plain head an exported adapter carries."""
        w = np.asarray(w_std, dtype=np.float64) * self.inv_std[None, :]
        return w, np.asarray(b_std, dtype=np.float64) - w @ self.mean

    # ----- wire form (public: it travels in the session setup) --------------------------------------
    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "inv_std": self.inv_std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, hidden: int) -> HeadStandardizer | None:
        """``None`` for a setup without one; a malformed one is a :class:`ProtocolError`."""
        if d is None:
            return None
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            inv = np.asarray(d["inv_std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"malformed head standardization in the session setup: {err}") from None
        if (
            mean.shape != (hidden,)
            or inv.shape != (hidden,)
            or not (np.isfinite(mean).all() and np.isfinite(inv).all())
            or not np.all(inv > 0)
        ):
            raise ProtocolError(
                f"head standardization must be two finite vectors of length {hidden}, inv_std positive"
            )
        return cls(mean, inv)

    def describe(self) -> dict[str, float]:
        std = 1.0 / self.inv_std
        return {
            "std_mean": float(std.mean()),
            "std_min": float(std.min()),
            "mean_abs_mean": float(np.abs(self.mean).mean()),
        }
