"""The end policy ``encrypted`` is the model owner's to enforce (ours): it hands out no adapter
ciphertexts, seals its checkpoints under its own key, and loads only what it sealed; a data owner can
still resume a run and run two-party inference with the trained adapter."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from p3eft.channel import InProcessChannel
from p3eft.errors import ProtocolError, SecurityError
from p3eft.privtuner import audit
from p3eft.privtuner import protocol as P
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner, _adapter_bytes
from p3eft.privtuner.run import TrainRecord, batches, train

EXAMPLES = [("good movie", 1), ("bad film", 0), ("great fun", 1), ("awful plot", 0)]
TOL = 1e-4  # CKKS noise at these magnitudes (as in test_proto_roles.py)
STATE_KEY = b"s" * 32
ENC = P.EndPolicy.ENCRYPTED


class Crash(Exception):
    """Stands for the data owner's process dying after a checkpoint was kept."""


def _owner(toy, policy=ENC, key=STATE_KEY) -> ModelOwner:
    return ModelOwner(toy.ToyBackend(), state_key=key, end_policy=policy)


def _adapter_of(mo: ModelOwner, do: DataOwner) -> dict[str, list[bytes]]:
    """The session's adapter ciphertexts, read inside the model owner (what it must never hand out)."""
    return _adapter_bytes(*mo._sessions[do.setup.session].require_model())


def test_the_model_owner_hands_out_no_adapter_ciphertexts(toy):
    mo = _owner(toy)
    ch = InProcessChannel(mo)
    do = DataOwner(ch, toy.ToyCodec, DataOwnerConfig(lr=0.5))
    assert do.setup.end_policy is ENC  # announced in the session setup
    do.train_step(EXAMPLES[:2])
    with pytest.raises(SecurityError, match="keeps the adapter encrypted"):
        do.decrypt_adapter()
    # a data owner that skips its own check meets the model owner's
    with pytest.raises(SecurityError, match="hands out no adapter ciphertexts"):
        ch.call(P.ADAPTER, session=do.setup.session)
    state = do.checkpoint()
    assert set(state) == {"sealed"} and isinstance(state["sealed"], bytes)
    # no piece of any adapter ciphertext is in what the data owner keeps
    sealed = state["sealed"]
    for blobs in _adapter_of(mo, do).values():
        for blob in blobs:
            assert len(blob) > 4096
            for at in range(0, len(blob) - 64, len(blob) // 8):
                assert blob[at : at + 64] not in sealed
    # the check above can fail: the same pieces are found in the sealed state's plaintext
    opened = mo._sealer.unseal(sealed, mo._sealed_label(mo._sessions[do.setup.session].require_model()[1]))
    some = next(iter(_adapter_of(mo, do).values()))[0]
    assert some[100:164] in b"".join(b for v in opened.values() for b in v)


def test_a_sealed_checkpoint_resumes_and_serves_two_party_inference(toy):
    plan = batches(EXAMPLES, 2, 1, seed=0)
    ref = DataOwner(InProcessChannel(_owner(toy, P.EndPolicy.EXPORT)), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    ref_rec = train(ref, plan)
    ref_logits = ref.logits("great fun")

    do = DataOwner(InProcessChannel(_owner(toy)), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    kept = {}

    def keep_then_crash(rec: TrainRecord) -> None:
        kept.update(state=do.checkpoint(), progress=rec.to_dict())
        raise Crash

    with pytest.raises(Crash):
        train(do, plan, after_step=keep_then_crash)
    # a restarted model owner (same state key, same policy) loads the sealed state into a new session
    rec_ch = audit.RecordingChannel(InProcessChannel(_owner(toy)))
    again = DataOwner(rec_ch, toy.ToyCodec, DataOwnerConfig(lr=0.5), keys=(do.ctx, do._sk))
    again.restore(kept["state"])
    rec = train(again, plan, record=TrainRecord(**kept["progress"]))
    assert np.allclose(rec.losses, ref_rec.losses, atol=TOL)
    # two-party inference with the trained adapter, from its final sealed checkpoint, in a new session
    final = again.checkpoint()
    viewer = DataOwner(InProcessChannel(_owner(toy)), toy.ToyCodec, keys=(do.ctx, do._sk))
    untrained = viewer.logits("great fun")
    viewer.restore(final)
    assert np.abs(viewer.logits("great fun") - ref_logits).max() < TOL
    assert np.abs(untrained - ref_logits).max() > 100 * TOL  # the restore is what made them equal
    # what the model owner received: ciphertexts, keys, control fields and its own sealed state
    inbox = audit.audit_model_owner_inbox(rec_ch.transcript)
    assert inbox.clean, inbox.violations
    assert inbox.sealed_states == 1


def test_the_model_owner_loads_only_states_it_sealed(toy):
    mo = _owner(toy)
    ch = InProcessChannel(mo)
    a = DataOwner(ch, toy.ToyCodec, DataOwnerConfig(lr=0.5))
    a.train_step(EXAMPLES[:2])
    sealed = a.checkpoint()["sealed"]
    same_keys = DataOwner(ch, toy.ToyCodec, keys=(a.ctx, a._sk))
    same_keys.restore({"sealed": sealed})  # accepted
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecurityError, match="checkpoint refused"):
        same_keys.restore({"sealed": flipped})
    with pytest.raises(SecurityError, match="checkpoint refused"):  # another data owner's keys
        DataOwner(ch, toy.ToyCodec).restore({"sealed": sealed})
    with pytest.raises(SecurityError, match="checkpoint refused"):  # another model owner's state key
        DataOwner(InProcessChannel(_owner(toy, key=b"t" * 32)), toy.ToyCodec, keys=(a.ctx, a._sk)).restore(
            {"sealed": sealed}
        )
    # the policy cannot be stepped around with the other form of checkpoint, either way
    exporter = _owner(toy, P.EndPolicy.EXPORT)  # same state key, export policy
    dx = DataOwner(InProcessChannel(exporter), toy.ToyCodec, keys=(a.ctx, a._sk))
    with pytest.raises(SecurityError, match="sealed checkpoints are loaded only"):
        dx.restore({"sealed": sealed})
    tagged = dx.checkpoint()
    with pytest.raises(SecurityError, match="loads sealed checkpoints only"):
        same_keys.restore(tagged)
    with pytest.raises(ProtocolError, match="one bytes field"):
        ch.call(P.RESTORE, session=same_keys.setup.session, sealed=sealed, tag="00")
    with pytest.raises(ProtocolError, match="one bytes field"):
        ch.call(P.RESTORE, session=same_keys.setup.session, sealed="not bytes")


def test_the_inbox_audit_tells_a_sealed_state_from_other_bytes(toy):
    mo = _owner(toy)
    rec = audit.RecordingChannel(InProcessChannel(mo))
    do = DataOwner(rec, toy.ToyCodec)
    do.restore(do.checkpoint())
    assert audit.audit_model_owner_inbox(rec.transcript).clean
    # negative control: arbitrary bytes (say, plaintext values) in the sealed field are a violation
    forged = [*rec.transcript]
    last = forged[-1]
    assert last.method == P.RESTORE
    raw = np.arange(64, dtype=np.float64).tobytes()
    forged[-1] = dataclasses.replace(last, request={**last.request, "sealed": raw})
    report = audit.audit_model_owner_inbox(forged)
    assert not report.clean and "sealed" in json.dumps(report.violations)


@pytest.mark.slow
def test_cli_finetune_encrypted_then_evaluate_from_the_checkpoint(tmp_path, monkeypatch, capsys):
    """`finetune --end encrypted` keeps the trained adapter only sealed; `evaluate --checkpoint` runs
    two-party inference with it in a new session and gets the logits the training session got."""
    from p3eft.cli.main import main
    from p3eft.privtuner.checkpoint import PASSPHRASE_ENV

    monkeypatch.setenv(PASSPHRASE_ENV, "cli end policy test")
    shape = [
        "--model",
        "tiny",
        "--layers",
        "1",
        "--max-len",
        "4",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--no-progress",
    ]
    out = tmp_path / "run"
    argv = ["privtuner", "finetune", *shape, "--limit", "1", "--eval-limit", "1", "--end", "encrypted"]
    assert main([*argv, "--out", str(out), "--json", str(tmp_path / "ft.json")]) == 0
    said = capsys.readouterr().out
    assert "evaluate --checkpoint" in said
    trained = json.loads((tmp_path / "ft.json").read_text())
    assert "adapter" not in trained and not (out / "adapter").exists()  # nothing exported
    ckpt = str(out / "checkpoint")
    argv = ["privtuner", "evaluate", *shape, "--limit", "1", "--checkpoint", ckpt]
    assert main([*argv, "--json", str(tmp_path / "ev.json")]) == 0
    again = json.loads((tmp_path / "ev.json").read_text())
    assert again["checkpoint"]["steps"] == 1
    assert np.abs(np.array(again["eval"]["logits"]) - np.array(trained["eval"]["logits"])).max() < TOL
    # a model with other flags does not take the adapter: one line naming the difference
    other = [*shape[:6], "--rank", "4", *shape[8:]]
    assert main(["privtuner", "evaluate", *other, "--limit", "1", "--checkpoint", ckpt]) == 2
    assert "rank" in capsys.readouterr().err
