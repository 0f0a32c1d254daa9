"""PrivTuner's roles and sessions: training through the protocol equals its twin, in process and over
gRPC + mutual TLS; one model owner serves two data owners without cross-talk; misuse is refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from p3eft.channel import InProcessChannel
from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import ops
from p3eft.fhe.context import keygen
from p3eft.fhe.params import ParamSet
from p3eft.privtuner import protocol as P
from p3eft.privtuner.net import connect_model_owner, model_owner_server
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner

BATCHES = [[("good movie", 1), ("bad film", 0)], [("great fun", 1), ("awful plot", 0)]]
TOL = 1e-4  # CKKS noise and the lambda=30 slot-mask refresh error are ~1e-5 at these magnitudes


def _train(do: DataOwner, batches) -> tuple[list[float], np.ndarray]:
    losses = [do.train_step(b) for b in batches]
    return losses, do.decrypt_adapter()["classifier.weight"]


def test_in_process_training_equals_twin(toy):
    backend = toy.ToyBackend(seed=1)
    do = DataOwner(InProcessChannel(ModelOwner(backend)), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    losses, w = _train(do, BATCHES)
    twin_losses, twin_w = toy.twin_train(backend, BATCHES, 0.5)
    assert np.allclose(losses, twin_losses, atol=TOL)
    assert np.abs(w - twin_w).max() < TOL
    assert not np.allclose(w, backend.w0, atol=1e-2)  # the step really moved the head
    assert not do.ctx.can_rotate(backend.galois_steps[0])  # the data owner dropped the keys it never uses
    led = do.ledger
    assert led.refresh_round_trips == 2 * 2 + 2  # one per forward, one per update
    assert led.bytes_up > 0 and led.bytes_down > 0 and led.server_cpu_s > 0 and led.device_cpu_s > 0


def test_a_data_owner_that_drops_its_uploaded_keys_trains_the_same_and_cannot_checkpoint(toy):
    """keep_key_bytes=False (the bench's data owner): the same training, the upload forgotten, and a
    checkpoint's key material refused with a clear error; the default keeps them (the control)."""
    backend = toy.ToyBackend(seed=1)
    lean = DataOwner(
        InProcessChannel(ModelOwner(backend)), toy.ToyCodec, DataOwnerConfig(lr=0.5, keep_key_bytes=False)
    )
    losses, w = _train(lean, BATCHES)
    twin_losses, twin_w = toy.twin_train(backend, BATCHES, 0.5)
    assert np.allclose(losses, twin_losses, atol=TOL) and np.abs(w - twin_w).max() < TOL
    assert lean.key_upload_bytes > 1e6 and not lean.ctx._key_envelopes
    with pytest.raises(ProtocolError, match="keep_key_bytes"):
        lean.key_material()
    with pytest.raises(ProtocolError, match="dropped"):
        lean.ctx.to_payload()
    keeper = DataOwner(InProcessChannel(ModelOwner(toy.ToyBackend(seed=1))), toy.ToyCodec)
    kept = keeper.key_material()["public"]
    assert sum(len(v) for v in kept.values()) == keeper.key_upload_bytes


def test_networked_run_equals_in_process(toy, certs):
    backend = toy.ToyBackend(seed=2)
    local = DataOwner(InProcessChannel(ModelOwner(backend)), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    local_losses, local_w = _train(local, BATCHES)
    server = model_owner_server(ModelOwner(backend), certs / "model-owner")
    port = server.start()
    try:
        remote = DataOwner(
            connect_model_owner(f"127.0.0.1:{port}", certs / "data-owner"),
            toy.ToyCodec,
            DataOwnerConfig(lr=0.5),
        )
        net_losses, net_w = _train(remote, BATCHES)
        remote.close()
    finally:
        server.stop()
    assert np.allclose(net_losses, local_losses, atol=TOL)
    assert np.abs(net_w - local_w).max() < TOL
    # the same messages crossed: same calls per method, same refresh round trips
    assert {k: v[0] for k, v in remote.ledger.per_method.items() if k != P.CLOSE} == {
        k: v[0] for k, v in local.ledger.per_method.items()
    }
    assert remote.ledger.refresh_round_trips == local.ledger.refresh_round_trips
    assert server.stats["refused"] == 0


def test_two_data_owners_on_one_model_owner_do_not_cross(toy):
    backend = toy.ToyBackend(seed=3)
    mo = ModelOwner(backend)
    a = DataOwner(InProcessChannel(mo), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    b = DataOwner(InProcessChannel(mo), toy.ToyCodec, DataOwnerConfig(lr=0.2))
    data_b = [[("dull", 0), ("wonderful", 1)], [("boring", 0)]]
    la, lb = [], []
    for ba, bb in zip(BATCHES, data_b, strict=True):  # interleaved steps
        la.append(a.train_step(ba))
        lb.append(b.train_step(bb))
    wa = a.decrypt_adapter()["classifier.weight"]
    wb = b.decrypt_adapter()["classifier.weight"]
    ta, twa = toy.twin_train(backend, BATCHES, 0.5)
    tb, twb = toy.twin_train(backend, data_b, 0.2)
    assert np.allclose(la, ta, atol=TOL) and np.abs(wa - twa).max() < TOL
    assert np.allclose(lb, tb, atol=TOL) and np.abs(wb - twb).max() < TOL
    assert a.ctx.context_id != b.ctx.context_id and mo.sessions == 2
    # a's ciphertext in b's session is refused by the engine's context check
    slots, layout = a.codec.encode("good movie")[0]
    foreign = a.ctx.ciphertext_to_bytes(a.ctx.encrypt_slots(slots, layout))
    with pytest.raises(SecurityError):
        InProcessChannel(mo).call(P.FORWARD, session=b.setup.session, inputs=[foreign])
    # and b's adapter cannot be decrypted with a's key
    enc_b = InProcessChannel(mo).call(P.ADAPTER, session=b.setup.session)
    with pytest.raises(SecurityError):
        a._decrypt(enc_b["classifier.weight"][0], "adapter")


def test_model_owner_refuses_misuse(toy):
    mo = ModelOwner(toy.ToyBackend())
    ch = InProcessChannel(mo)
    setup = P.SessionSetup.from_payload(ch.call(P.OPEN))
    with pytest.raises(ProtocolError, match="unknown, closed or expired"):
        ch.call(P.FORWARD, session="0" * 32, inputs=[])
    with pytest.raises(ProtocolError, match="upload the FHE public keys"):
        ch.call(P.FORWARD, session=setup.session, inputs=[])
    with pytest.raises(ProtocolError, match="not allowed"):
        ch.call(P.OPEN, options={"labels": [1, 0]})
    with pytest.raises(ProtocolError, match="no request"):
        ch.call(P.RESUME, session=setup.session, answer=b"")
    do = DataOwner(ch, toy.ToyCodec)
    with pytest.raises(ProtocolError, match="learning rate"):
        ch.call(P.UPDATE, session=do.setup.session, lr=float("nan"))
    # a data owner's ciphertexts are fresh encryptions: one below the top level is refused up front
    # (not an internal failure deep in the computation), and the session still serves afterwards
    fresh = do._encrypt_inputs("good movie")
    low = [do.ctx.ciphertext_to_bytes(ops.drop_to(do.ctx, do.ctx.ciphertext_from_bytes(b), 0)) for b in fresh]
    with pytest.raises(ProtocolError, match="fresh encryptions are at level"):
        ch.call(P.FORWARD, session=do.setup.session, inputs=low)
    with pytest.raises(ProtocolError, match="fresh encryptions are at level"):
        ch.call(P.BACKWARD, session=do.setup.session, dlogits=low)
    with pytest.raises(ProtocolError, match="list of ciphertexts"):
        ch.call(P.FORWARD, session=do.setup.session, inputs=[1.5])
    for bad_key in ("k" * 257, 7):
        with pytest.raises(ProtocolError, match="string of at most 256 characters"):
            ch.call(P.FORWARD, session=do.setup.session, inputs=fresh, key=bad_key)
    assert do.logits("good movie").shape == (2,)
    ch.call(P.CLOSE, session=setup.session)
    with pytest.raises(ProtocolError, match="unknown, closed or expired"):
        ch.call(P.ADAPTER, session=setup.session)


def test_keys_that_cannot_make_the_model_s_rotations_are_refused(toy):
    """The model owner checks the uploaded Galois keys against every rotation its model makes (a step's
    own key or its NAF digits' keys) before it binds them, not deep in the first forward pass."""
    mo = ModelOwner(toy.ToyBackend())
    ch = InProcessChannel(mo)
    setup = P.SessionSetup.from_payload(ch.call(P.OPEN))
    ctx, _ = keygen(ParamSet.from_json(setup.params), setup.galois_steps[1:])  # no key for rotating by 1
    with pytest.raises(ProtocolError, match="lack 1 rotation steps"):
        ch.call(P.KEYS, session=setup.session, keys=ctx.to_payload())
    ok, _ = keygen(ParamSet.from_json(setup.params), setup.galois_steps)
    ch.call(P.KEYS, session=setup.session, keys=ok.to_payload())  # the session is still open for good keys


def test_the_model_owner_checks_the_rotations_its_model_makes_not_its_key_policy():
    """A model owner asking for power-of-two keys accepts a data owner's kept exact keys (a checkpoint
    made under the other policy: they make every rotation too), and refuses keys that miss a step."""
    import dataclasses

    from p3eft.fhe import galois
    from p3eft.privtuner.encrypted import rotation_steps
    from p3eft.privtuner.toy import calibrated
    from p3eft.privtuner.twin import PrivTunerModel
    from p3eft.privtuner.wiring import BertBackend, BertCodec

    model, report, params, _ = calibrated(layers=1, adapt_from=0)
    pow2 = PrivTunerModel(dataclasses.replace(model.cfg, rotation_keys="pow2"), model.weights)
    backend = BertBackend(pow2.cfg, model=pow2, calibration=report, init_params=params)
    steps = rotation_steps(pow2)
    assert set(steps) != set(backend.galois_steps) and backend.rotation_steps == steps
    mo = ModelOwner(backend)
    kept = keygen(pow2.cfg.params, steps)
    do = DataOwner(InProcessChannel(mo), BertCodec, keys=kept)  # accepted
    do.close()
    slots = pow2.cfg.params.slots
    lone = next(s for s in steps if len(galois.naf_terms(galois.signed_step(s, slots))) == 1)
    short = keygen(pow2.cfg.params, [s for s in steps if s != lone])
    with pytest.raises(ProtocolError, match="lack 1 rotation steps"):
        DataOwner(InProcessChannel(mo), BertCodec, keys=short)


class FakeClock:
    """The model owner's idle clock, advanced by hand (keygen's real duration must not matter)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_silent_data_owner_loses_its_session_and_frees_the_slot(toy):
    """A data owner that stops answering (here: mid-request, its refresh callback left unanswered)
    must not hold a session, and the model owner's worker parked on it, forever: after the idle
    timeout the session is closed when the next request arrives, and its slot serves someone else."""
    clock = FakeClock()
    mo = ModelOwner(toy.ToyBackend(), max_sessions=2, idle_timeout_s=10.0, clock=clock)
    ch = InProcessChannel(mo)
    silent = DataOwner(ch, toy.ToyCodec)
    reply = ch.call(P.FORWARD, session=silent.setup.session, inputs=silent._encrypt_inputs("good movie"))
    assert reply["kind"] == "callback"  # parked on the refresh; never answered
    worker = mo._sessions[silent.setup.session]._worker
    busy = DataOwner(ch, toy.ToyCodec)
    with pytest.raises(ProtocolError, match="at most 2 sessions"):
        DataOwner(ch, toy.ToyCodec)
    clock.t = 6.0
    busy.logits("bad film")  # heard from at t=6: not idle at t=12
    clock.t = 12.0
    fresh = DataOwner(ch, toy.ToyCodec)  # the silent one (idle since t=0) is reaped, the busy one is not
    assert mo.expired == 1 and mo.sessions == 2
    worker.join(timeout=10)
    assert not worker.is_alive()  # its parked worker was released
    with pytest.raises(ProtocolError, match="expired"):
        ch.call(P.RESUME, session=silent.setup.session, answer=b"")
    assert busy.logits("bad film").shape == fresh.logits("good movie").shape == (2,)


def test_a_long_computation_is_not_idleness(toy):
    """Time the model owner spends computing for a session does not count against it: a forward that
    outlasts the idle timeout survives another data owner's requests meanwhile."""
    clock = FakeClock()
    mo = ModelOwner(toy.ToyBackend(), idle_timeout_s=10.0, clock=clock)
    ch = InProcessChannel(mo)
    slow = DataOwner(ch, toy.ToyCodec)
    model = mo._sessions[slow.setup.session].model
    fast_forward, started, release = model.forward, threading.Event(), threading.Event()

    def blocked_forward(*args, **kwargs):
        started.set()
        release.wait(timeout=30)
        return fast_forward(*args, **kwargs)

    model.forward = blocked_forward
    out = {}
    t = threading.Thread(target=lambda: out.update(z=slow.logits("good movie")))
    t.start()
    assert started.wait(timeout=30)
    clock.t = 100.0  # far past the timeout while the model owner computes
    other = DataOwner(ch, toy.ToyCodec)  # runs the idle check
    assert mo.expired == 0
    release.set()
    t.join(timeout=30)
    assert out["z"].shape == (2,) and other.logits("bad film").shape == (2,)
    with pytest.raises(ValueError, match="positive"):
        ModelOwner(toy.ToyBackend(), idle_timeout_s=0)


def _second_polynomial(ct) -> bytes:
    from p3eft.fhe import rawpoly

    words = rawpoly.read_words(ct.seal)
    return words[words.size // 2 :].tobytes()


def _byte_strings(obj) -> list[bytes]:
    if isinstance(obj, bytes):
        return [obj]
    if isinstance(obj, dict):
        return [b for v in obj.values() for b in _byte_strings(v)]
    if isinstance(obj, list | tuple):
        return [b for v in obj for b in _byte_strings(v)]
    return []


@pytest.mark.parametrize("roles_forget", [False, True])
def test_every_ciphertext_the_data_owner_receives_is_rerandomised(toy, monkeypatch, roles_forget):
    """The data owner can open whatever it receives, and it made the inputs of every computation, so a
    ciphertext whose second polynomial is the computation's own lets it test guesses of the model
    owner's weights (tests/fhe/test_fhe_refresh.py). Refresh requests, logits, checkpoints and the
    exported adapter must all have passed through ops.rerandomise. Negative control: a model owner
    whose role code forgets it (the refresh still re-randomises) is caught."""
    import types

    from p3eft.privtuner import roles

    fresh: set[bytes] = set()
    real = ops.rerandomise

    def spy(ctx, ct):
        out = real(ctx, ct)
        fresh.add(_second_polynomial(out))
        return out

    monkeypatch.setattr(ops, "rerandomise", spy)
    if roles_forget:
        monkeypatch.setattr(roles, "ops", types.SimpleNamespace(rerandomise=lambda ctx, ct: ct))
    received: list = []

    class Recording(InProcessChannel):
        def call(self, method, /, **kwargs):
            out = super().call(method, **kwargs)
            received.append(out)
            return out

    do = DataOwner(Recording(ModelOwner(toy.ToyBackend(seed=3))), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    do.train_step(BATCHES[0])
    do.logits("great fun")
    do.checkpoint()
    do.decrypt_adapter()
    cts = []
    for blob in (b for r in received for b in _byte_strings(r)):
        try:
            cts.append(do.ctx.ciphertext_from_bytes(blob))
        except (ProtocolError, SecurityError):
            continue  # not a ciphertext of this session
    assert len(cts) >= 8  # refreshes, logits, the checkpoint's and the export's adapter
    stale = [ct for ct in cts if _second_polynomial(ct) not in fresh]
    if roles_forget:
        assert stale
    else:
        assert not stale, f"{len(stale)} of {len(cts)} ciphertexts reached the data owner as computed"
