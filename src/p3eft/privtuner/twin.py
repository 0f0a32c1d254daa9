"""The approximate twin: the encrypted path's arithmetic in plaintext NumPy (ours).

The twin runs :class:`~p3eft.privtuner.graph.EncoderGraph` on the
:class:`~p3eft.privtuner.backend.PlainBackend`, i.e. the very code the encrypted path runs, with the
same approximations, calibrated ranges, packing padding and order of operations; what remains
between the twin and the ciphertexts is CKKS noise and the refresh's rounding. With ``exact=True``
every approximation is replaced by its exact function, which gives the plain BERT + LoRA model
(the plaintext LoRA reference; tests check it against transformers).

It is the reference for every exactness check, the calibration engine, and the fast path for
accuracy sweeps (:meth:`Twin.train`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.privtuner.approx import FnSet
from p3eft.privtuner.backend import PlainBackend, RangeFlag
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.graph import EncoderGraph, ForwardCache, matrices_to_params, param_matrices
from p3eft.privtuner.model import EncoderWeights, load_encoder
from p3eft.privtuner.packing import PackingSpec, key_mask, token_matrix
from p3eft.privtuner.rotation import embed, random_rotation, rotated_embedding_tables
from p3eft.privtuner.standardize import HeadStandardizer


@dataclass
class Example:
    """One tokenised example: ``seq`` token ids (real ones first, then padding), its length, label."""

    ids: np.ndarray
    length: int
    label: int = 0


class PrivTunerModel:
    """The model owner's plaintext side: weights, packing, secret rotation and the graph."""

    def __init__(self, cfg: PrivTunerConfig, weights: EncoderWeights | None = None) -> None:
        self.cfg = cfg
        self.weights = (
            weights if weights is not None else load_encoder(cfg.model, cfg.layers, cfg.num_labels, cfg.seed)
        )
        if len(self.weights.layers) != cfg.layers:
            raise P3eftError(f"weights have {len(self.weights.layers)} layers, config says {cfg.layers}")
        self.spec = PackingSpec.build(self.weights.hidden, cfg.max_len, cfg.params.slots)
        positions = int(self.weights.position.shape[0])
        if self.spec.seq > positions:  # every packed row, padding included, takes a position embedding
            fits = max(
                (
                    n
                    for n in range(2, positions + 1)
                    if PackingSpec.build(self.weights.hidden, n, cfg.params.slots).seq <= positions
                ),
                default=None,
            )
            raise P3eftError(
                f"max_len {cfg.max_len} packs to {self.spec.seq} rows, more than {cfg.model}'s {positions} "
                f"position embeddings; the largest max_len that fits is {fits}"
            )
        rng = np.random.default_rng([cfg.seed, 0x707])
        self._rotation = random_rotation(self.weights.hidden, rng)  # secret of the model owner
        self.graph = EncoderGraph(self.weights, cfg, self.spec, self._rotation)

    def rotated_tables(self) -> dict[str, np.ndarray]:
        """What the model owner hands the data owner (see :mod:`p3eft.privtuner.rotation`); computed
        once (a 30522 x 384 table takes seconds)."""
        if getattr(self, "_tables", None) is None:
            w = self.weights
            self._tables = rotated_embedding_tables(w.word, w.position, w.token_type, self._rotation)
        return self._tables

    # ----- parameters ------------------------------------------------------------------------------
    def init_params(
        self, seed: int | None = None, b_scale: float = 0.0, head_std: HeadStandardizer | None = None
    ) -> dict[str, np.ndarray]:
        """LoRA A ~ U(-1/sqrt(d), 1/sqrt(d)) (peft's kaiming-uniform bound), B = 0 (or N(0, b_scale)
        for tests that need a non-zero B), the classifier from the loaded model; as logical matrices,
        the head in standardized coordinates if ``head_std`` is given (the calibration's
        ``fns.head_std``: the function is the same either way)."""
        rng = np.random.default_rng([self.cfg.seed if seed is None else seed, 0x10A])
        d, r = self.weights.hidden, self.cfg.lora_rank
        lora = {}
        for li in range(self.cfg.adapt_from, self.cfg.layers):
            for m in ("q", "v"):
                lora[f"L{li}.{m}.A"] = rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), size=(r, d))
                lora[f"L{li}.{m}.B"] = b_scale * rng.standard_normal((d, r))
        w = self.weights
        return param_matrices(self.spec, self.cfg, lora, w.classifier_w, w.classifier_b, head_std)

    def plain_params(
        self, mats: dict[str, np.ndarray], head_std: HeadStandardizer | None = None
    ) -> dict[str, np.ndarray]:
        """Logical matrices -> ``L{l}.{q|v}.A`` (r x d), ``.B`` (d x r), ``head.W``, ``head.b`` (the
        plain head: ``head_std`` is the standardization the matrices were laid out with)."""
        return matrices_to_params(self.spec, self.cfg, self.weights.hidden, mats, head_std)

    def reparametrize_head(
        self, mats: dict[str, np.ndarray], old: HeadStandardizer | None, new: HeadStandardizer | None
    ) -> dict[str, np.ndarray]:
        """The same parameters laid out for the standardization ``new`` instead of ``old``."""
        return self.matrices_from_plain(self.plain_params(mats, old), new)

    def matrices_from_plain(
        self, plain: dict[str, np.ndarray], head_std: HeadStandardizer | None = None
    ) -> dict[str, np.ndarray]:
        """The inverse of :meth:`plain_params`: plain LoRA factors and head (``head.W``, ``head.b``)
        -> the graph's matrices, the head laid out for ``head_std``."""
        lora = {k: v for k, v in plain.items() if k not in ("head.W", "head.b")}
        return param_matrices(self.spec, self.cfg, lora, plain["head.W"], plain["head.b"], head_std)

    # ----- data owner's side (used by the twin and by tests) ----------------------------------------
    def example_inputs(
        self, ex: Example, tables: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rotated token matrix, key mask) as logical (seq, width) matrices."""
        tables = tables if tables is not None else self.rotated_tables()
        ids = np.asarray(ex.ids)
        if ids.shape != (self.spec.seq,):
            raise P3eftError(f"an example needs {self.spec.seq} token ids (padded), got {ids.shape}")
        return token_matrix(self.spec, embed(tables, ids)), key_mask(self.spec, ex.length)


def cross_entropy_grad(logits: np.ndarray, label: int) -> tuple[float, np.ndarray]:
    """(loss, dL/dlogits) of softmax cross-entropy: what the data owner computes locally."""
    z = logits - np.max(logits)
    p = np.exp(z) / np.exp(z).sum()
    g = p.copy()
    g[label] -= 1.0
    return float(-np.log(max(p[label], 1e-300))), g


class Twin:
    """Plaintext reference of the encrypted path (``exact=False``) or the plain model (``exact=True``)."""

    def __init__(self, model: PrivTunerModel, fns: FnSet | None = None, exact: bool = False) -> None:
        if fns is None and not exact:
            raise P3eftError("the approximate twin needs calibrated functions (see calibration.calibrate)")
        self.model = model
        self.exact = exact
        self.fns = (fns.exact_copy() if fns is not None else FnSet(exact=True)) if exact else fns
        self.flags: list[RangeFlag] = []
        # the largest |value| / calibrated refresh bound seen so far (PlainBackend.bound_ratio)
        self.bound_ratio = 0.0

    def backend(self, record: bool = False) -> PlainBackend:
        return PlainBackend(self.model.spec, self.fns, record=record)

    def forward(
        self, ex: Example, params: dict[str, np.ndarray], keep: bool = False, bk: PlainBackend | None = None
    ) -> tuple[np.ndarray, ForwardCache | None]:
        bk = bk or self.backend()
        x_rot, km = self.model.example_inputs(ex)
        g = self.model.graph
        cache = ForwardCache() if keep else None
        x = g.forward_frozen(bk, x_rot, km)
        logits = g.forward_adapted(bk, x, km, params, cache)
        self._absorb(bk)
        return logits, cache

    def _absorb(self, bk: PlainBackend, flags_seen: int = 0) -> None:
        """Keep ``bk``'s range flags from index ``flags_seen`` on and its value/bound ratio."""
        self.flags.extend(bk.flags[flags_seen:])
        self.bound_ratio = max(self.bound_ratio, bk.bound_ratio)

    def logits(self, ex: Example, params: dict[str, np.ndarray]) -> np.ndarray:
        return self.forward(ex, params)[0]

    def gradients(
        self, ex: Example, params: dict[str, np.ndarray], dlogits: np.ndarray | None = None
    ) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """(loss, logits, grads) for one example; ``dlogits`` overrides the cross-entropy gradient."""
        bk = self.backend()
        logits, cache = self.forward(ex, params, keep=True, bk=bk)
        assert cache is not None
        loss, g = cross_entropy_grad(logits, ex.label)
        if dlogits is not None:
            g = np.asarray(dlogits, dtype=np.float64)
        spec = self.model.spec
        gm = []
        for gc in g:
            m = np.zeros((spec.seq, spec.width))
            m[0] = gc
            gm.append(m)
        seen = len(bk.flags)  # the forward's flags are already counted
        grads = self.model.graph.backward(bk, cache, gm, params)
        self._absorb(bk, seen)
        return loss, logits, grads

    @staticmethod
    def sgd(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
        """p <- p - lr * g (what :meth:`EncryptedAdapter.apply_sgd` does on ciphertexts)."""
        return {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}

    def step(
        self, ex: Example, params: dict[str, np.ndarray], lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        loss, _, grads = self.gradients(ex, params)
        return loss, self.sgd(params, grads, lr)

    def train(
        self,
        examples: Sequence[Example],
        params: dict[str, np.ndarray],
        lr: float,
        epochs: int = 1,
        progress: Any = None,
    ) -> tuple[dict[str, np.ndarray], list[float]]:
        """Per-example SGD (batch 1, as the encrypted run does); returns the params and the loss curve."""
        losses = []
        for _ in range(epochs):
            for ex in examples:
                loss, params = self.step(ex, params, lr)
                losses.append(loss)
                if progress is not None:
                    progress(loss)
        return params, losses

    def predict(self, examples: Iterable[Example], params: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([int(np.argmax(self.logits(ex, params))) for ex in examples])
