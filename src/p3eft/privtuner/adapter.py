"""The trained parameters as ciphertexts under the data owner's key (ours).

The model owner initialises LoRA A, B (query and value of every adapted layer) and the classifier in
plaintext, encrypts them with the data owner's *public* key (:meth:`EncryptedAdapter.encrypt`), and
from then on only holds ciphertexts: gradients are accumulated homomorphically and
:meth:`EncryptedAdapter.apply_sgd` performs p <- p - lr * g on ciphertexts. Only the data owner can
decrypt (:meth:`EncryptedAdapter.decrypt`), which yields peft-style names:

* ``encoder.layer.{l}.attention.self.{query|value}.lora_A.weight`` (r x hidden),
* ``encoder.layer.{l}.attention.self.{query|value}.lora_B.weight`` (hidden x r),
* ``classifier.weight`` (labels x hidden), ``classifier.bias`` (labels).

Each parameter is stored as the logical matrices of :func:`p3eft.privtuner.graph.param_matrices`
(one per LoRA rank component and per label), each ``spec.cts`` ciphertexts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from p3eft.errors import ProtocolError
from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, SecretKey
from p3eft.fhe.nonlinear import Refresher
from p3eft.privtuner.standardize import HeadStandardizer
from p3eft.privtuner.twin import PrivTunerModel

# the sum of two logical matrices, each a list of ciphertexts
MatrixSum = Callable[[list[Ciphertext], list[Ciphertext]], list[Ciphertext]]

MODULE_NAMES = {"q": "query", "v": "value"}


def peft_names(plain: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``L{l}.{q|v}.A``/``.B``, ``head.W``/``head.b`` -> peft-style parameter names."""
    out = {}
    for k, v in plain.items():
        if k == "head.W":
            out["classifier.weight"] = v
        elif k == "head.b":
            out["classifier.bias"] = v
        else:
            layer, mod, ab = k.split(".")
            out[f"encoder.layer.{layer[1:]}.attention.self.{MODULE_NAMES[mod]}.lora_{ab}.weight"] = v
    return out


def from_peft_names(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`peft_names`: peft-style names -> ``L{l}.{q|v}.A``/``.B``, ``head.W``/``head.b``."""
    modules = {v: k for k, v in MODULE_NAMES.items()}
    out = {}
    for k, v in named.items():
        if k == "classifier.weight":
            out["head.W"] = v
        elif k == "classifier.bias":
            out["head.b"] = v
        else:
            parts = k.split(".")  # encoder.layer.{l}.attention.self.{module}.lora_{A|B}.weight
            if len(parts) != 8 or parts[5] not in modules or not parts[6].startswith("lora_"):
                raise ProtocolError(f"not a PrivTuner adapter tensor name: {k!r}")
            out[f"L{parts[2]}.{modules[parts[5]]}.{parts[6][5:]}"] = v
    return out


class EncryptedAdapter:
    """LoRA factors + classifier as ciphertexts (model owner's side), with encrypted gradients."""

    def __init__(self, ctx: CkksContext, mats: dict[str, list[Ciphertext]]) -> None:
        self.ctx = ctx
        self.mats = mats
        self.grads: dict[str, list[Ciphertext]] = {}
        self.steps = 0

    @classmethod
    def encrypt(
        cls, ctx: CkksContext, model: PrivTunerModel, params: dict[str, np.ndarray]
    ) -> EncryptedAdapter:
        """Encrypt plaintext logical matrices (``model.init_params()``) under ``ctx``'s public key."""
        lay = model.spec.layout()
        mats = {
            name: [ctx.encrypt_slots(s, lay) for s in model.spec.pack_matrix(m)] for name, m in params.items()
        }
        return cls(ctx, mats)

    def accumulate(self, grads: dict[str, list[Ciphertext]], add: MatrixSum | None = None) -> None:
        """g <- g + grads (several examples before one update). ``add`` sums two matrices; the model
        owner passes its backend's guarded addition (:meth:`CipherBackend.add`), which refreshes an
        operand first when bringing two scales together would take the sum below the refresh floor."""
        for k, g in grads.items():
            if k not in self.mats:
                raise ProtocolError(f"gradient for unknown parameter {k}")
            cur = self.grads.get(k)
            if cur is None:
                self.grads[k] = list(g)
            elif add is not None:
                self.grads[k] = add(cur, list(g))
            else:
                self.grads[k] = [ops.add(self.ctx, a, b) for a, b in zip(cur, g, strict=True)]

    def apply_sgd(self, lr: float, refresher: Refresher | None = None) -> int:
        """p <- p - lr * g homomorphically, then clear g. Every updated parameter below the top
        level is refreshed back to it (with the refresher's bound, the configured ceiling: |parameter|
        must stay below it to be hidden with lambda bits). Returns the number of refreshes.

        Why the top level (ours, measured 2026-12-01): until then a parameter was refreshed only when
        fewer than 3 levels above the floor were left. On the tiny model (lr 0.5) the value factors B
        then sat at level 4 of 8 after one update, and the next forward pass's pooled features were
        4e-6 off the twin on the decrypted parameters instead of 8e-8 (the standardized head multiplies
        that by up to 1.6e4 on minilm-l6). Refreshing them to the top level removed it; which
        operation of the forward pass loses the precision is not found. Cost: at most one more
        refresh per parameter ciphertext per update (minilm-l6, 2 layers, rank 8, 8 tokens: 68
        ciphertexts, against ~3150 refreshes in the rest of an 8-sentence update)."""
        refreshes = 0
        for k, g in self.grads.items():
            new = []
            for p, gi in zip(self.mats[k], g, strict=True):
                if refresher is not None and self.ctx.level(gi) - 1 < refresher.min_level:
                    gi = refresher(gi)
                    refreshes += 1
                step = ops.mul_plain(self.ctx, gi, float(lr))
                q = ops.sub(self.ctx, p, step)
                if refresher is not None and self.ctx.level(q) < self.ctx.top_level:
                    q = refresher(q)
                    refreshes += 1
                q.layout = p.layout
                new.append(q)
            self.mats[k] = new
        self.grads = {}
        self.steps += 1
        return refreshes

    # ----- bytes -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Checked ciphertext envelopes behind a JSON index (names, counts)."""
        index = {k: len(v) for k, v in self.mats.items()}
        head = json.dumps({"index": index, "steps": self.steps}).encode()
        parts = [struct.pack(">I", len(head)), head]
        for k in index:
            for c in self.mats[k]:
                b = self.ctx.ciphertext_to_bytes(c)
                parts += [struct.pack(">I", len(b)), b]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, ctx: CkksContext, data: bytes) -> EncryptedAdapter:
        try:
            (n,) = struct.unpack(">I", data[:4])
            head = json.loads(data[4 : 4 + n])
            pos = 4 + n
            mats: dict[str, list[Ciphertext]] = {}
            for k, count in head["index"].items():
                lst = []
                for _ in range(int(count)):
                    (m,) = struct.unpack(">I", data[pos : pos + 4])
                    lst.append(ctx.ciphertext_from_bytes(data[pos + 4 : pos + 4 + m]))
                    pos += 4 + m
                mats[k] = lst
        except (struct.error, ValueError, KeyError, TypeError) as err:
            raise ProtocolError(f"malformed encrypted adapter: {err}") from err
        if pos != len(data):
            raise ProtocolError("trailing bytes after the encrypted adapter")
        out = cls(ctx, mats)
        out.steps = int(head.get("steps", 0))
        return out

    # ----- data owner ----------------------------------------------------------------------------
    def decrypt_matrices(self, sk: SecretKey, model: PrivTunerModel) -> dict[str, np.ndarray]:
        """The logical matrices (the twin's parameter format)."""
        return {
            k: model.spec.unpack_matrix([sk.decrypt_slots(self.ctx, c) for c in v])
            for k, v in self.mats.items()
        }

    def decrypt(
        self, sk: SecretKey, model: PrivTunerModel, head_std: HeadStandardizer | None = None
    ) -> dict[str, np.ndarray]:
        """Data owner: the adapter and the plain head with peft-style names (see module doc);
        ``head_std``: the session's head standardization, folded back."""
        return peft_names(model.plain_params(self.decrypt_matrices(sk, model), head_std))

    def describe(self) -> dict[str, Any]:
        return {
            "parameters": len(self.mats),
            "ciphertexts": sum(len(v) for v in self.mats.values()),
            "steps": self.steps,
        }
