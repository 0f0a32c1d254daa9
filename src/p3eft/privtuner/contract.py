"""The seam between PrivTuner's protocol (roles, sessions) and its maths (the encrypted model).

The roles never touch a layer, an approximation or a packing: they move keys and ciphertexts and
count them. What the maths must provide is this small interface, one object per side:

* model owner: a :class:`ModelBackend` (the plaintext model, shared by all sessions) that opens a
  :class:`SessionModelSpec` per data owner (its own secret rotation, its own public setup), which is
  bound to that data owner's public :class:`~p3eft.fhe.context.CkksContext` and refresher to give the
  session's :class:`EncryptedModel` (encoder + adapter encrypted under that data owner's key);
* data owner: a :class:`ClientCodec` built from the public setup only: it turns a sentence into the slot
  vectors it encrypts, and decrypted slots back into logits and adapter tensors.

:mod:`p3eft.privtuner.engine` implements it with the encrypted BERT encoder.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.nonlinear import Refresher
from p3eft.fhe.parallel import KernelPool
from p3eft.fhe.params import ParamSet


class EncryptedModel(Protocol):
    """One data owner's encrypted model on the model owner's side."""

    def forward(self, inputs: list[Ciphertext], key: str | None, train: bool) -> Ciphertext:
        """Encrypted logits for one example; ``key`` names the example (frozen-layer cache), ``train``
        keeps what :meth:`backward` needs."""
        ...

    def backward(self, dlogits: list[Ciphertext]) -> None:
        """Accumulate the encrypted gradients of the adapter for the last training forward."""
        ...

    def apply_sgd(self, lr: float) -> None:
        """One homomorphic SGD update of the encrypted adapter with the accumulated gradients."""
        ...

    def adapter_ciphertexts(self) -> dict[str, list[Ciphertext]]:
        """The encrypted adapter and head, by name (what an export decrypts)."""
        ...

    def load_adapter(self, mats: dict[str, list[Ciphertext]]) -> None:
        """Replace the encrypted adapter and head with a checkpoint's (same names and counts, checked
        by the caller) and drop any gradient not yet applied."""
        ...


class SessionModelSpec(Protocol):
    """One session's model before the data owner's keys arrive."""

    def public_setup(self) -> dict[str, Any]:
        """What the data owner may receive (payload types only): rotated tables, layouts, shapes."""
        ...

    def bind(self, ctx: CkksContext, refresher: Refresher, pool: KernelPool | None = None) -> EncryptedModel:
        """The session's encrypted model under the data owner's keys. ``pool``, when the model owner
        runs one, may take the model's heavy products (a model may ignore it)."""
        ...


class ModelBackend(Protocol):
    """The model owner's model, from which it opens one session per data owner."""

    name: str
    params: ParamSet
    galois_steps: list[int]  # the steps the data owner makes Galois keys for (its key policy's)
    rotation_steps: list[int]  # every step the model rotates by (the uploaded keys must make each)
    refresh_bound: float
    refresh_lambda: int

    def open_session(self, seed: int | None) -> SessionModelSpec: ...


class ClientCodec(Protocol):
    """The data owner's view of the model: inputs to slots, slots to logits and adapter tensors."""

    def encode(self, text: str) -> list[tuple[np.ndarray, Layout]]:
        """Tokenise, embed with the rotated table and pack: the slot vectors to encrypt."""
        ...

    def logits(self, values: np.ndarray, layout: Layout) -> np.ndarray:
        """The logits from the decrypted slots of the logits ciphertext."""
        ...

    def dlogits_slots(self, dlogits: np.ndarray, layout: Layout) -> list[tuple[np.ndarray, Layout]]:
        """dL/dlogits packed the way :meth:`EncryptedModel.backward` expects it."""
        ...

    def adapter(self, decrypted: dict[str, list[tuple[np.ndarray, Layout]]]) -> dict[str, np.ndarray]:
        """Decrypted adapter ciphertexts -> peft-named tensors."""
        ...
