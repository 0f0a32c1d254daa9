"""Both parties' maths in one process: the encrypted forward/step against the twin (tests, verify).

This is not the protocol (roles, channel, audit live in ``roles.py``/``session.py``); it runs the same
encrypted model with a :class:`~p3eft.fhe.refresh.LocalRefresher` so that exactness can be checked
quickly: :func:`verify_local` returns ``logit_max_abs_diff`` (encrypted vs twin) and
``step_max_abs_diff`` (adapter after one encrypted SGD step vs the twin's step).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.fhe.context import Ciphertext, CkksContext, SecretKey, keygen
from p3eft.fhe.refresh import LocalRefresher
from p3eft.privtuner import packing
from p3eft.privtuner.adapter import EncryptedAdapter
from p3eft.privtuner.approx import FnSet
from p3eft.privtuner.encrypted import EncryptedEncoder, required_galois_steps
from p3eft.privtuner.rotation import embed
from p3eft.privtuner.twin import Example, PrivTunerModel, Twin, cross_entropy_grad


def examples_from_sentences(
    tokenizer: Any, spec: packing.PackingSpec, sentences: Sequence[str], labels: Sequence[int]
) -> list[Example]:
    """Tokenise (truncate to max_len, pad to the packing's ``seq`` rows with the pad token)."""
    out = []
    for s, y in zip(sentences, labels, strict=True):
        ids = tokenizer(s, truncation=True, max_length=spec.max_len)["input_ids"]
        row = np.full(spec.seq, tokenizer.pad_token_id or 0, dtype=np.int64)
        row[: len(ids)] = ids
        out.append(Example(row, len(ids), int(y)))
    return out


@dataclass
class LocalSession:
    """A data owner's keys and a model owner's encrypted encoder + adapter, in one process."""

    model: PrivTunerModel
    fns: FnSet
    ctx: CkksContext
    sk: SecretKey
    refresher: LocalRefresher
    encoder: EncryptedEncoder
    adapter: EncryptedAdapter
    keygen_s: float = 0.0
    tables: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def start(cls, model: PrivTunerModel, fns: FnSet, params: dict[str, np.ndarray]) -> LocalSession:
        t0 = time.perf_counter()
        ctx, sk = keygen(model.cfg.params, required_galois_steps(model))
        kg = time.perf_counter() - t0
        ref = LocalRefresher(ctx, sk, model.cfg.refresh_bound, model.cfg.refresh_lambda)
        enc = EncryptedEncoder(model, fns, ctx, ref)
        ad = EncryptedAdapter.encrypt(ctx, model, params)
        return cls(model, fns, ctx, sk, ref, enc, ad, kg, model.rotated_tables())

    # data owner side
    def encrypt_example(self, ex: Example) -> list[Ciphertext]:
        vecs = packing.pack_example(self.model.spec, embed(self.tables, ex.ids), ex.length)
        return [self.ctx.encrypt_slots(s, lay) for s, lay in vecs]

    def decrypt_logits(self, ct: Ciphertext) -> np.ndarray:
        return packing.unpack_logits(
            self.model.spec, self.sk.decrypt_slots(self.ctx, ct), self.model.weights.num_labels
        )

    def encrypt_dlogits(self, g: np.ndarray) -> list[Ciphertext]:
        return [self.ctx.encrypt_slots(s, lay) for s, lay in packing.pack_dlogits(self.model.spec, g)]

    def step(self, ex: Example, lr: float) -> dict[str, Any]:
        """One encrypted training step on one example; returns logits, loss, timings, refreshes."""
        r0 = self.refresher.calls
        t0 = time.perf_counter()
        cts = self.encrypt_example(ex)
        logits_ct = self.encoder.forward(cts, self.adapter, cache_key=None)
        t1 = time.perf_counter()
        logits = self.decrypt_logits(logits_ct)
        loss, g = cross_entropy_grad(logits, ex.label)
        self.encoder.backward(self.encrypt_dlogits(g))
        self.adapter.apply_sgd(lr, self.refresher)
        t2 = time.perf_counter()
        return {
            "logits": logits,
            "dlogits": g,
            "loss": loss,
            "forward_s": t1 - t0,
            "backward_update_s": t2 - t1,
            "refreshes": self.refresher.calls - r0,
            "logits_level": self.ctx.level(logits_ct),
        }


def verify_local(
    model: PrivTunerModel, fns: FnSet, params: dict[str, np.ndarray], examples: Sequence[Example], lr: float
) -> dict[str, Any]:
    """Encrypted forward + one SGD step per example, each against the twin from the same parameters.

    ``logit_max_abs_diff``: max over examples of |encrypted logits - twin logits| (before the step);
    ``step_max_abs_diff``: max |decrypted adapter - twin adapter| after the steps (the twin is fed
    the same dL/dlogits the data owner computed from the decrypted logits, so both take one path).
    """
    if not examples:
        raise P3eftError("verify needs at least one example")
    t0 = time.perf_counter()
    sess = LocalSession.start(model, fns, params)
    twin = Twin(model, fns)
    twin_params = params
    logit_diff = 0.0
    steps = []
    for ex in examples:
        res = sess.step(ex, lr)
        _, twin_logits, grads = twin.gradients(ex, twin_params, dlogits=res["dlogits"])
        logit_diff = max(logit_diff, float(np.max(np.abs(res["logits"] - twin_logits))))
        twin_params = Twin.sgd(twin_params, grads, lr)
        steps.append(
            {k: v for k, v in res.items() if k not in ("logits", "dlogits")}
            | {"logits": res["logits"].tolist()}
        )
    dec = sess.adapter.decrypt_matrices(sess.sk, model)
    by_param = {k: float(np.max(np.abs(dec[k] - twin_params[k]))) for k in dec}
    return {
        "logit_max_abs_diff": logit_diff,
        "step_max_abs_diff": max(by_param.values()),
        "step_abs_diff_by_param": by_param,
        "seconds": time.perf_counter() - t0,
        "keygen_s": sess.keygen_s,
        "refreshes": sess.refresher.calls,
        "steps": steps,
        "range_flags": [f.__dict__ for f in twin.flags],
        "stats": sess.encoder.stats,
        "param_set": model.cfg.param_set,
        "levels": model.cfg.params.depth,
        "refresh_floor": sess.refresher.min_level,
    }
