"""`p3eft serve privtuner-model-owner` as its own process on 127.0.0.1: two data owners train at the
same time over mutual TLS, each equal to its own twin (no cross-talk), and a party without a
data-owner certificate is refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from p3eft.errors import P3eftError
from p3eft.privtuner.net import connect_model_owner
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.launch import PartyGroup, p3eft_argv
from p3eft.runtime.pki import load_identity

from .conftest import TOY_PATH, pool_workers, wait_gone

DATA = {
    "a": ([[("good movie", 1), ("bad film", 0)], [("great fun", 1)]], 0.5),
    "b": ([[("dull", 0), ("wonderful", 1)], [("boring", 0), ("lovely", 1)]], 0.2),
}


def _serve_toy(certs, *extra: str) -> list[str]:
    """`p3eft serve privtuner-model-owner` with the toy backend (and ``extra`` flags)."""
    folder = str(certs / "model-owner")
    factory = f"{TOY_PATH}:ToyBackend"
    return p3eft_argv(
        "serve",
        "privtuner-model-owner",
        "--certs",
        folder,
        "--factory",
        factory,
        *extra,
        "--ready-file",
        "{ready}",
    )


def test_served_model_owner_trains_two_data_owners_at_once(toy, certs, tmp_path):
    argv = _serve_toy(certs)
    results: dict[str, tuple] = {}
    errors: list[BaseException] = []
    with PartyGroup(tmp_path) as group:
        url = group.start("model-owner", argv, timeout_s=60).url

        def run(name: str) -> None:
            try:
                batches, lr = DATA[name]
                folder = certs / ("data-owner" if name == "a" else "data-owner-2")  # two identities
                do = DataOwner(connect_model_owner(url, folder), toy.ToyCodec, DataOwnerConfig(lr=lr))
                losses = [do.train_step(b) for b in batches]
                results[name] = (losses, do.decrypt_adapter()["classifier.weight"])
                do.close()
            except BaseException as err:  # surfaced below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(n,)) for n in DATA]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        # a certificate of another party may not call the model owner
        with pytest.raises(P3eftError):
            ch = NetworkChannel(url, load_identity(certs / "cloud", "cloud"), "model-owner")
            ch.call("pt_open_session")
    assert not errors, errors
    backend = toy.ToyBackend()  # the served factory's default seed
    for name, (batches, lr) in DATA.items():
        twin_losses, twin_w = toy.twin_train(backend, batches, lr)
        losses, w = results[name]
        assert np.allclose(losses, twin_losses, atol=1e-4)
        assert np.abs(w - twin_w).max() < 1e-4


def test_a_checkpoint_outlives_a_restart_of_the_served_model_owner(toy, certs, tmp_path):
    """The model owner's process dies between two steps: restarted with the same --state-key it
    accepts the data owner's checkpoint in a new session, and training goes on from it; restarted
    with a new key it refuses it."""
    from p3eft.errors import SecurityError
    from p3eft.privtuner.checkpoint import model_owner_state_key

    def serve(group: PartyGroup, name: str, key: str) -> str:
        return group.start(name, _serve_toy(certs, "--state-key", key), timeout_s=60).url

    batches, lr = DATA["b"]
    key = str(tmp_path / "state.key")
    with PartyGroup(tmp_path / "first") as group:
        do = DataOwner(
            connect_model_owner(serve(group, "mo-1", key), certs / "data-owner"),
            toy.ToyCodec,
            DataOwnerConfig(lr=lr),
        )
        first = do.train_step(batches[0])
        state, keys = do.checkpoint(), (do.ctx, do._sk)
        do.channel.close()  # the model owner stops with the group, the session with it
    assert len(model_owner_state_key(key)) == 32  # created by the first server, kept
    with PartyGroup(tmp_path / "second") as group:
        again = DataOwner(
            connect_model_owner(serve(group, "mo-2", key), certs / "data-owner"),
            toy.ToyCodec,
            DataOwnerConfig(lr=lr),
            keys=keys,
        )
        again.restore(state)
        second = again.train_step(batches[1])
        w = again.decrypt_adapter()["classifier.weight"]
        again.close()
    with PartyGroup(tmp_path / "third") as group:
        other = DataOwner(
            connect_model_owner(serve(group, "mo-3", str(tmp_path / "new.key")), certs / "data-owner"),
            toy.ToyCodec,
            keys=keys,
        )
        with pytest.raises(SecurityError, match="checkpoint refused"):
            other.restore(state)
        other.close()
    twin_losses, twin_w = toy.twin_train(toy.ToyBackend(), batches, lr)
    assert np.allclose([first, second], twin_losses, atol=1e-4)
    assert np.abs(w - twin_w).max() < 1e-4
    (tmp_path / "short.key").write_bytes(b"x")
    with pytest.raises(SecurityError, match="shorter than 32"):
        model_owner_state_key(tmp_path / "short.key")


def test_a_served_model_owner_enforces_the_encrypted_end_policy(toy, certs, tmp_path):
    """`serve privtuner-model-owner --end-policy encrypted`: the data owner learns the policy from its
    session setup, gets no adapter ciphertexts over the wire even when it asks, and resumes from the
    sealed checkpoint in a new session."""
    from p3eft.errors import SecurityError
    from p3eft.privtuner import protocol as P

    batches, lr = DATA["a"]
    argv = _serve_toy(certs, "--end-policy", "encrypted", "--state-key", str(tmp_path / "state.key"))
    with PartyGroup(tmp_path) as group:
        url = group.start("model-owner", argv, timeout_s=60).url
        do = DataOwner(connect_model_owner(url, certs / "data-owner"), toy.ToyCodec, DataOwnerConfig(lr=lr))
        assert do.setup.end_policy is P.EndPolicy.ENCRYPTED
        first = do.train_step(batches[0])
        with pytest.raises(P3eftError, match="hands out no adapter ciphertexts"):
            do.channel.call(P.ADAPTER, session=do.setup.session)
        state = do.checkpoint()
        assert set(state) == {"sealed"}
        again = DataOwner(
            connect_model_owner(url, certs / "data-owner"),
            toy.ToyCodec,
            DataOwnerConfig(lr=lr),
            keys=(do.ctx, do._sk),
        )
        again.restore(state)
        second = again.train_step(batches[1])
        with pytest.raises(SecurityError, match="keeps the adapter encrypted"):
            again.decrypt_adapter()
        do.close()
        again.close()
    twin_losses, _ = toy.twin_train(toy.ToyBackend(), batches, lr)
    assert np.allclose([first, second], twin_losses, atol=1e-4)


def test_a_served_model_owner_with_workers_starts_and_stops_a_pool_per_session(toy, certs, tmp_path):
    """`serve privtuner-model-owner --workers 2` (a gRPC server that must not fork: the pool spawns):
    each data owner's session gets its own two workers when its keys arrive, training still equals
    the twin, closing the session stops its workers, and killing the server leaves none behind."""
    import os
    import signal

    batches, lr = DATA["a"]
    with PartyGroup(tmp_path) as group:
        party = group.start("model-owner", _serve_toy(certs, "--workers", "2"), timeout_s=60)
        do = DataOwner(
            connect_model_owner(party.url, certs / "data-owner"), toy.ToyCodec, DataOwnerConfig(lr=lr)
        )
        first = pool_workers(party.proc.pid)
        assert len(first) == 2
        other = DataOwner(
            connect_model_owner(party.url, certs / "data-owner-2"), toy.ToyCodec, DataOwnerConfig(lr=lr)
        )
        both = pool_workers(party.proc.pid)
        assert len(both) == 4 and set(first) < set(both)  # a pool of its own per session
        losses = [do.train_step(b) for b in batches]
        do.close()
        assert not wait_gone(first)  # closing the session stopped its workers
        assert sorted(pool_workers(party.proc.pid)) == sorted(set(both) - set(first))
        left = pool_workers(party.proc.pid)
        os.kill(party.proc.pid, signal.SIGKILL)  # the other session is still open
        party.proc.wait(timeout=30)
        assert not wait_gone(left)  # no orphans: each worker watches its parent
        other.channel.close()
    twin_losses, _ = toy.twin_train(toy.ToyBackend(), batches, lr)
    assert np.allclose(losses, twin_losses, atol=1e-4)
