"""Transcript audit: the model owner receives only ciphertexts, public keys and allowed control fields;
no decryption result reaches it; the data owner's refresh views do not depend on the message.
Each check has a negative control that the same code must catch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from p3eft.channel import InProcessChannel
from p3eft.fhe import rawpoly
from p3eft.fhe.context import Ciphertext, Layout
from p3eft.fhe.refresh import RefreshMasker
from p3eft.privtuner import audit
from p3eft.privtuner import protocol as P
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner

BATCHES = [[("good movie", 1), ("bad film", 0)], [("great fun", 1)]]


@pytest.fixture(scope="module")
def recorded(toy):
    backend = toy.ToyBackend(seed=4)
    rec = audit.RecordingChannel(InProcessChannel(ModelOwner(backend)))
    do = DataOwner(rec, toy.ToyCodec, DataOwnerConfig(lr=0.5, record_decryptions=True, keep_views=True))
    for b in BATCHES:
        do.train_step(b)
    do.logits("a new sentence")
    do.decrypt_adapter()
    return do, rec.transcript


def test_model_owner_receives_only_ciphertexts_and_public_keys(recorded):
    do, transcript = recorded
    rep = audit.audit_model_owner_inbox(transcript)
    assert rep.clean, rep.violations
    assert rep.ciphertexts >= 5 + 3 + 3  # inputs, dL/dlogits, refresh answers
    assert rep.key_material == 4  # params, public, relin, Galois keys
    verdict = audit.summary(transcript, [d.values for d in do.decryptions])
    assert verdict["model_owner_saw_plaintext"] is False
    assert {d.purpose for d in do.decryptions} == {"refresh", "logits", "adapter"}


def test_inbox_audit_catches_plaintext_and_secret_keys(recorded):
    do, transcript = recorded
    bad = copy.deepcopy(transcript)
    fwd = next(ex for ex in bad if ex.method == P.FORWARD)
    fwd.request["inputs"] = [np.ones(8)]  # a plaintext activation
    keys = next(ex for ex in bad if ex.method == P.KEYS)
    keys.request["keys"]["relin_keys"] = do._sk.to_bytes()  # a secret key where a public key belongs
    bwd = next(ex for ex in bad if ex.method == P.BACKWARD)
    bwd.request["label"] = 1  # a field the protocol does not have
    rep = audit.audit_model_owner_inbox(bad)
    text = " ".join(rep.violations)
    assert len(rep.violations) == 3
    assert "ndarray" in text and "relin_keys" in text and "label" in text


def test_decryption_search_catches_a_leaked_logit(recorded):
    do, transcript = recorded
    logits = [d.values for d in do.decryptions if d.purpose == "logits"]
    assert audit.find_decryptions_in_inbox(transcript, [d.values for d in do.decryptions]) == []
    leak_value = float(logits[0][np.argmax(np.abs(logits[0]))])
    as_control = copy.deepcopy(transcript)
    next(ex for ex in as_control if ex.method == P.UPDATE).request["lr"] = leak_value
    assert audit.find_decryptions_in_inbox(as_control, logits)
    as_bytes = copy.deepcopy(transcript)
    next(ex for ex in as_bytes if ex.method == P.FORWARD).request["key"] = np.float64(leak_value).tobytes()
    assert audit.find_decryptions_in_inbox(as_bytes, logits)


def _poly_ciphertext(ctx, coeff: int):
    """A ciphertext one level below the top whose plaintext polynomial has every coefficient ``coeff``."""
    zero = sealapi.Ciphertext(ctx.seal)
    ctx.encrypt_zero(zero, ctx.top_level - 1, ctx.params.scale)
    poly = np.full(ctx.params.poly_modulus_degree, coeff, dtype=object)
    return Ciphertext(rawpoly.add_integer_poly(ctx, zero, poly), ctx.context_id, Layout(1))


def _views(do: DataOwner, coeff: int, bound: float, lam: int, n: int) -> np.ndarray:
    """The data owner's views of ``n`` refreshes of one message, masked by the model owner's masker."""
    ctx = do.ctx
    out = []
    for _ in range(n):
        masker = RefreshMasker(ctx, bound, 30)
        masker.lam = lam  # negative control only: the masker refuses lambda < 30 when built
        masked = masker.mask(_poly_ciphertext(ctx, coeff))
        do.fhe_refresh(ctx.ciphertext_to_bytes(masked))
        out.append(do.decryptions.pop().values)
    return audit.normalised_views(out, bound, lam, ctx.params.scale)


def test_refresh_views_do_not_depend_on_the_message(recorded):
    """Two messages at opposite ends of the covered range (every plaintext coefficient +B*scale or
    -B*scale): the data owner's views are uniform and indistinguishable."""
    do, transcript = recorded
    bound = do.setup.refresh_bound
    top = int(bound * do.ctx.params.scale)
    a = _views(do, top, bound, do.setup.refresh_lambda, 2)
    b = _views(do, -top, bound, do.setup.refresh_lambda, 2)
    same = audit.refresh_view_test(a, b)
    assert same.p_value > 1e-4, same
    assert audit.uniformity_test(a).p_value > 1e-4
    # negative control: a mask only a few times wider than the message is detected by the same test
    a2 = _views(do, top, bound, 1, 2)
    b2 = _views(do, -top, bound, 1, 2)
    assert audit.refresh_view_test(a2, b2).p_value < 1e-6


def test_views_of_a_real_run_are_uniform(recorded):
    do, _ = recorded
    views = [d.values for d in do.decryptions if d.purpose == "refresh"][:4]
    assert len(views) == 4
    norm = audit.normalised_views(views, do.setup.refresh_bound, do.setup.refresh_lambda, do.ctx.params.scale)
    assert np.abs(norm).max() <= 1.0 + 1e-6
    assert audit.uniformity_test(norm).p_value > 1e-4


def test_online_audit_equals_the_recorded_one(toy):
    backend = toy.ToyBackend(seed=5)
    aud = audit.AuditingChannel(InProcessChannel(ModelOwner(backend)))
    do = DataOwner(aud, toy.ToyCodec, DataOwnerConfig(lr=0.5, record_decryptions=True))
    aud.bind(do.decryptions)
    do.train_step(BATCHES[0])
    do.logits("one more")
    verdict = aud.summary()
    assert verdict["model_owner_saw_plaintext"] is False and verdict["inbox"]["ciphertexts"] > 0
    assert aud.search.vectors == len(do.decryptions) - 1  # all but the last logits preceded a request
    # negative control: a request carrying a value decrypted earlier is caught online
    leak = float(do.decryptions[0].values[0])
    aud.inbox.check(P.FORWARD, {"session": do.setup.session, "inputs": [np.zeros(3)]})
    assert aud.search.search(
        P.BACKWARD, {"session": do.setup.session, "dlogits": [np.float64(leak).tobytes()]}
    )
    assert aud.summary()["model_owner_saw_plaintext"] is True
