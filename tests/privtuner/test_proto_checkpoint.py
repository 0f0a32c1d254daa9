"""Checkpoints and resume (p3eft.privtuner.checkpoint): a run interrupted after a step and resumed in a
new session, even on a restarted model owner, ends where the uninterrupted run ends; the model owner
loads only states it produced itself for those keys; the sealed file opens only with the passphrase."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.channel import InProcessChannel
from p3eft.errors import MissingResourceError, P3eftError, ProtocolError, SecurityError
from p3eft.privtuner import audit
from p3eft.privtuner import protocol as P
from p3eft.privtuner.checkpoint import CheckpointDir, check_same_run
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner
from p3eft.privtuner.run import TrainRecord, batches, train

EXAMPLES = [("good movie", 1), ("bad film", 0), ("great fun", 1), ("awful plot", 0)]
TOL = 1e-4  # CKKS noise at these magnitudes (as in test_proto_roles.py)
PASS = b"correct horse battery"
STATE_KEY = b"k" * 32


class Crash(Exception):
    """Stands for the data owner's process dying after a checkpoint was written."""


def _plan():
    return batches(EXAMPLES, 2, 1, seed=0)


def _weights(do: DataOwner) -> np.ndarray:
    return do.decrypt_adapter()["classifier.weight"]


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(toy, tmp_path):
    plan = _plan()
    ref = DataOwner(InProcessChannel(ModelOwner(toy.ToyBackend())), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    ref_rec = train(ref, plan)
    ref_w = _weights(ref)
    ref.close()

    store = CheckpointDir(tmp_path / "ckpt", PASS)
    run_id = {"examples": len(EXAMPLES), "batch": 2}
    do = DataOwner(
        InProcessChannel(ModelOwner(toy.ToyBackend(), state_key=STATE_KEY)),
        toy.ToyCodec,
        DataOwnerConfig(lr=0.5),
    )

    def save_then_crash(rec: TrainRecord) -> None:
        store.save(do.key_material(), do.checkpoint(), run_id, rec.to_dict())
        raise Crash

    with pytest.raises(Crash):
        train(do, plan, after_step=save_then_crash)
    # both parties restart: a new model owner process (same state key), a new data owner session
    saved = store.load()
    check_same_run(saved.run, run_id)
    mo = ModelOwner(toy.ToyBackend(), state_key=STATE_KEY)
    rec_ch = audit.RecordingChannel(InProcessChannel(mo))
    again = DataOwner(rec_ch, toy.ToyCodec, DataOwnerConfig(lr=0.5), keys=saved.keys)
    assert again.ctx.context_id == do.ctx.context_id
    again.restore(saved.state)
    rec = train(again, plan, record=TrainRecord(**saved.progress))
    assert len(rec.losses) == len(plan) and np.allclose(rec.losses, ref_rec.losses, atol=TOL)
    assert np.abs(_weights(again) - ref_w).max() < TOL
    # restoring and checkpointing send only ciphertexts and the model owner's own tag
    inbox = audit.audit_model_owner_inbox(rec_ch.transcript)
    assert inbox.clean, inbox.violations
    assert {P.RESTORE} <= {ex.method for ex in rec_ch.transcript}


def test_the_model_owner_loads_only_its_own_states(toy):
    mo = ModelOwner(toy.ToyBackend(), state_key=STATE_KEY)
    ch = InProcessChannel(mo)
    a = DataOwner(ch, toy.ToyCodec, DataOwnerConfig(lr=0.5))
    a.train_step(EXAMPLES[:2])
    state = a.checkpoint()
    a2 = DataOwner(ch, toy.ToyCodec, keys=(a.ctx, a._sk))  # same keys, new session: accepted
    a2.restore(state)
    assert np.abs(_weights(a2) - _weights(a)).max() < TOL

    # a changed ciphertext (here: the initial adapter in place of the trained one), a made-up tag
    other = {
        "adapter": DataOwner(ch, toy.ToyCodec, keys=(a.ctx, a._sk)).checkpoint()["adapter"],
        "tag": state["tag"],
    }
    with pytest.raises(SecurityError, match="checkpoint refused"):
        a2.restore(other)
    with pytest.raises(SecurityError, match="checkpoint refused"):
        a2.restore({"adapter": state["adapter"], "tag": "00" * 32})
    # another data owner (other keys) cannot load it: the ciphertexts are not under its key
    b = DataOwner(ch, toy.ToyCodec)
    with pytest.raises(SecurityError):
        b.restore(state)
    # a model owner with another state key (or a restart without keeping it) refuses it
    fresh = DataOwner(InProcessChannel(ModelOwner(toy.ToyBackend())), toy.ToyCodec, keys=(a.ctx, a._sk))
    with pytest.raises(SecurityError, match="checkpoint refused"):
        fresh.restore(state)
    with pytest.raises(ProtocolError, match="this model's parameters"):
        a2.restore({"adapter": {"classifier.weight": []}, "tag": state["tag"]})
    # not while a request is pending
    ch.call(P.FORWARD, session=a2.setup.session, inputs=a2._encrypt_inputs("good movie"))
    with pytest.raises(ProtocolError, match="still pending"):
        ch.call(P.CHECKPOINT, session=a2.setup.session)
    with pytest.raises(SecurityError, match="at least 32 bytes"):
        ModelOwner(toy.ToyBackend(), state_key=b"short")


def test_the_sealed_checkpoint_needs_the_passphrase_and_its_own_keys(toy, tmp_path):
    mo = ModelOwner(toy.ToyBackend(), state_key=STATE_KEY)
    a = DataOwner(InProcessChannel(mo), toy.ToyCodec)
    store = CheckpointDir(tmp_path / "a", PASS)
    store.save(a.key_material(), a.checkpoint(), {"x": 1}, TrainRecord().to_dict())
    raw = store.state_path.read_bytes()
    assert a._sk.to_bytes()[-64:] not in raw  # the secret key is not on disk in the clear
    with pytest.raises(SecurityError, match="does not open"):
        CheckpointDir(tmp_path / "a", b"wrong passphrase").load()
    store.state_path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(SecurityError, match="does not open"):
        CheckpointDir(tmp_path / "a", PASS).load()
    store.state_path.write_bytes(raw)
    # public keys swapped for another key pair's
    b = DataOwner(InProcessChannel(mo), toy.ToyCodec)
    other = CheckpointDir(tmp_path / "b", PASS)
    other.save(b.key_material(), b.checkpoint(), {"x": 1}, TrainRecord().to_dict())
    store.keys_path.write_bytes(other.keys_path.read_bytes())
    with pytest.raises(SecurityError, match="not the public half"):
        CheckpointDir(tmp_path / "a", PASS).load()
    with pytest.raises(MissingResourceError, match="no checkpoint"):
        CheckpointDir(tmp_path / "none", PASS).load()
    # a run killed after writing its public keys but before its first state: the next run's first
    # save writes its own keys, so its checkpoint loads
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "public_keys.bin").write_bytes(other.keys_path.read_bytes())
    CheckpointDir(tmp_path / "c", PASS).save(
        a.key_material(), a.checkpoint(), {"x": 1}, TrainRecord().to_dict()
    )
    assert CheckpointDir(tmp_path / "c", PASS).load().keys[1].context_id == a.ctx.context_id
    with pytest.raises(P3eftError, match="another run: lr was 0.5, now 0.1"):
        check_same_run({"lr": 0.5, "seed": 0}, {"lr": 0.1, "seed": 0})
    with pytest.raises(P3eftError, match="at least 8"):
        CheckpointDir(tmp_path / "d", b"short")


def test_finetune_refuses_to_overwrite_or_resume_nothing(tmp_path, monkeypatch, capsys):
    """Checked before any model is loaded: --resume without a passphrase or a checkpoint, and a new
    run over an old checkpoint (which would be lost)."""
    from p3eft.cli.main import main
    from p3eft.privtuner.checkpoint import PASSPHRASE_ENV

    def refused(argv: list[str], message: str) -> None:
        assert main(["privtuner", "finetune", "--model", "tiny", "--out", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    refused(["--resume"], f"set {PASSPHRASE_ENV}")
    monkeypatch.setenv(PASSPHRASE_ENV, PASS.decode())
    refused(["--resume"], "holds no checkpoint to resume")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.sealed").write_bytes(b"x")
    refused([], "already holds a checkpoint: pass --resume")


def test_the_model_owners_state_key_is_created_once_and_private(tmp_path):
    from p3eft.privtuner.checkpoint import model_owner_state_key

    path = tmp_path / "mo" / "state.key"
    key = model_owner_state_key(path)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert model_owner_state_key(path) == key  # kept, not redrawn: checkpoints outlive a restart
    assert model_owner_state_key(tmp_path / "other.key") != key
