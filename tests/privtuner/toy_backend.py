"""A small but genuine encrypted model for the protocol tests: an encrypted linear classifier (ours).

It is not PrivTuner's BERT; it exists so that the protocol tests (sessions, callbacks, accounting,
audit, networking, export policy) run in a second and do not depend on the encoder's speed. Every
number it produces is computed under encryption with the engine: a ciphertext x ciphertext product of
the input and the encrypted head, a real client-aided refresh through the data owner, rotations to
sum, an encrypted gradient and a homomorphic SGD update (then a refresh of the head).

Its plaintext twin (:func:`twin_train`) runs the same arithmetic in float64, for exactness checks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.nonlinear import Refresher
from p3eft.fhe.params import NAMED_SETS

DIM = 8
CLASSES = 2
VOCAB = 32
PARAMS = NAMED_SETS["N16384"]


def _token_ids(text: str) -> list[int]:
    return [int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little") % VOCAB for w in text.split()]


def features(table: np.ndarray, text: str) -> np.ndarray:
    ids = _token_ids(text) or [0]
    return table[ids].mean(axis=0)


def logits_layout() -> Layout:
    return Layout(1, CLASSES, DIM, "rows")


class ToyCodec:
    """Data-owner side: mean of table rows, replicated once per class."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.table = np.asarray(setup["table"], dtype=np.float64)

    def encode(self, text: str) -> list[tuple[np.ndarray, Layout]]:
        x = features(self.table, text)
        slots = np.zeros(PARAMS.slots)
        for c in range(CLASSES):
            slots[c * DIM : (c + 1) * DIM] = x
        return [(slots, Layout(DIM, CLASSES, DIM, "rows"))]

    def logits(self, values: np.ndarray, layout: Layout) -> np.ndarray:
        return np.array([values[c * layout.block] for c in range(layout.rows)])

    def dlogits_slots(self, dlogits: np.ndarray, layout: Layout) -> list[tuple[np.ndarray, Layout]]:
        slots = np.zeros(PARAMS.slots)
        for c in range(CLASSES):
            slots[c * DIM : (c + 1) * DIM] = dlogits[c]
        return [(slots, Layout(DIM, CLASSES, DIM, "rows"))]

    def adapter(self, decrypted: dict[str, list[tuple[np.ndarray, Layout]]]) -> dict[str, np.ndarray]:
        values, layout = decrypted["classifier.weight"][0]
        return {"classifier.weight": np.array([values[c * DIM : c * DIM + DIM] for c in range(CLASSES)])}


class ToyModel:
    def __init__(self, ctx: CkksContext, refresher: Refresher, w0: np.ndarray) -> None:
        self.ctx, self.refresher = ctx, refresher
        slots = np.zeros(ctx.slots)
        slots[: CLASSES * DIM] = w0.ravel()
        self.w = ctx.encrypt_slots(slots, Layout(DIM, CLASSES, DIM, "rows"))  # under the data owner's key
        self.x: Ciphertext | None = None
        self.grad: Ciphertext | None = None
        self.pick = np.zeros(ctx.slots)
        self.pick[[c * DIM for c in range(CLASSES)]] = 1.0

    def forward(self, inputs: list[Ciphertext], key: str | None, train: bool) -> Ciphertext:
        x = inputs[0]
        prod = self.refresher(ops.multiply(self.ctx, x, self.w))
        s = ops.rotate_sum(self.ctx, prod, DIM)
        if train:
            self.x = x
        return ops.mul_plain(self.ctx, s, self.pick, logits_layout())

    def backward(self, dlogits: list[Ciphertext]) -> None:
        assert self.x is not None
        g = ops.multiply(self.ctx, dlogits[0], self.x)
        self.grad = g if self.grad is None else ops.add(self.ctx, self.grad, g)

    def apply_sgd(self, lr: float) -> None:
        if self.grad is None:
            return
        step = ops.mul_plain(self.ctx, self.grad, -lr)
        self.w = self.refresher(ops.add(self.ctx, self.w, step))
        self.grad = None

    def adapter_ciphertexts(self) -> dict[str, list[Ciphertext]]:
        return {"classifier.weight": [self.w]}

    def load_adapter(self, mats: dict[str, list[Ciphertext]]) -> None:
        self.w, self.grad = mats["classifier.weight"][0], None


class ToySpec:
    def __init__(self, table: np.ndarray, w0: np.ndarray) -> None:
        self.table, self.w0 = table, w0

    def public_setup(self) -> dict[str, Any]:
        return {"table": self.table}

    def bind(self, ctx: CkksContext, refresher: Refresher, pool: object = None) -> ToyModel:
        return ToyModel(ctx, refresher, self.w0)


class ToyBackend:
    name = "toy-linear"
    params = PARAMS
    galois_steps = rotation_steps = ops.rotate_sum_steps(DIM)
    refresh_bound = 16.0
    refresh_lambda = 30

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 1, (VOCAB, DIM))
        self.w0 = rng.normal(0, 0.5, (CLASSES, DIM))

    def open_session(self, seed: int | None) -> ToySpec:
        return ToySpec(self.table, self.w0)


def twin_train(
    backend: ToyBackend, batches: list[list[tuple[str, int]]], lr: float
) -> tuple[list[float], np.ndarray]:
    """The same training in float64: losses per step and the final head."""
    from p3eft.privtuner.roles import cross_entropy_grad

    w = backend.w0.copy()
    losses = []
    for batch in batches:
        grad = np.zeros_like(w)
        ls = []
        for text, label in batch:
            x = features(backend.table, text)
            loss, g = cross_entropy_grad(w @ x, label)
            ls.append(loss)
            grad += np.outer(g / len(batch), x)
        w = w - lr * grad
        losses.append(float(np.mean(ls)))
    return losses, w
