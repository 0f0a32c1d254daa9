"""Parties as real processes (toy roles).

* ``kill -9`` of the cloud or the enclave mid-call, restarted: the run resumes from the last sealed
  checkpoint with the same final adapter as an uninterrupted run (bit for bit);
* several data owners on one enclave, concurrently: each ends with exactly the adapter of a solo
  run on its own data, with and without a ``kill -9`` of the enclave in the middle;
* the enclave after a restart reaches the cloud before it takes an upload, and a data owner that
  comes before any upload gets a clear message without the enclave's paths.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from p3eft.channel import InProcessChannel
from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime.attestation import code_measurement
from p3eft.runtime.connect import open_enclave_channel
from p3eft.runtime.launch import PartyGroup, cloud_argv, connect_attested, enclave_argv
from p3eft.runtime.pki import init_keys

HERE = Path(__file__).parent
TOY = HERE / "toy_parties.py"
STEPS, K = 9, 3


def _toy():
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_parties_local", TOY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(toy, seed: bytes, owner: int = 0, steps: int = STEPS) -> tuple[list[float], dict]:
    """A solo, uninterrupted, in-process run on data owner ``owner``'s batches."""
    enclave = InProcessChannel(toy.make_enclave(InProcessChannel(toy.make_cloud()), seed))
    for chunk in toy.model_chunks():
        enclave.call("provision", **chunk)
    enclave.call("configure_training", lr=0.2)
    losses = [enclave.call("train_step", **toy.batch(s + 100 * owner))["loss"] for s in range(steps)]
    return losses, enclave.call("export_adapter")


def _later(delay: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


class World:
    """Keys, a cloud and an enclave (toy factories) as processes on fixed free ports."""

    def __init__(self, tmp_path: Path, group: PartyGroup, owners: int = 1, k: int = K) -> None:
        self.keys, self.state = tmp_path / "keys", tmp_path / "state"
        init_keys(self.keys, data_owners=owners)
        self.cport, self.eport = _free_port(), _free_port()
        self.group = group
        self.cloud_argv = cloud_argv(self.keys / "cloud", port=self.cport, factory=f"{TOY}:make_cloud")
        self.enclave_argv = enclave_argv(
            self.keys / "enclave",
            f"127.0.0.1:{self.cport}",
            self.state,
            checkpoint_every=k,
            settings={},
            port=self.eport,
            factory=f"{TOY}:make_enclave",
        )

    def start(self, upload: bool = True):
        self.cloud = self.group.start("cloud", self.cloud_argv)
        self.enclave = self.group.start("enclave", self.enclave_argv)
        if upload:
            self.upload()
        return self

    def upload(self) -> None:
        with connect_attested(
            self.enclave.url, self.keys / "model-owner", "model-owner", measured_files=(TOY,)
        ) as mo:
            for chunk in _toy().model_chunks():
                mo.call("provision", **chunk)

    def data_owner(self, party: str = "data-owner"):
        return open_enclave_channel(self.enclave.url, self.keys / party, party=party, measured_files=(TOY,))

    def seed(self) -> bytes:
        from p3eft.runtime.launch import enclave_sealer

        sealer = enclave_sealer(self.keys / "enclave", code_measurement([TOY]))
        return sealer.read(self.state / "host.sealed", "p3eft-host")["session_seed"]


def test_kill_cloud_and_enclave_mid_call_resumes_exactly(tmp_path):
    toy = _toy()
    with PartyGroup(tmp_path / "run") as group:
        w = World(tmp_path, group).start()
        ch = w.data_owner()
        ch.call("configure_training", lr=0.2)
        losses = []
        for s in range(STEPS):
            b = toy.batch(s)
            if s == 4:  # kill -9 the cloud while it is inside forward, restart it on the same port
                _later(0.3, lambda: (w.cloud.kill(), w.cloud.start()))
                losses.append(ch.call("train_step", **b, delay=1.0)["loss"])
            elif s == 7:  # kill -9 the enclave during the call, restart it from its sealed state
                _later(0.3, lambda: (w.enclave.kill(), w.enclave.start()))
                losses.append(ch.call("train_step", **b, delay=1.0)["loss"])
            else:
                losses.append(ch.call("train_step", **b)["loss"])
        status = ch.call("runtime_status")
        final = ch.call("export_adapter")
        ch.close()
        seed = w.seed()
    assert ch.recoveries == 2
    assert status["restores"] >= 1 and status["calls"] == STEPS + 1  # configure_training + steps
    ref_losses, ref = _reference(toy, seed)
    assert losses == ref_losses
    for key in ("a", "b"):
        assert torch.equal(final[key], ref[key]), key


def _train(w: World, party: str, owner: int, out: dict, chaos=None) -> None:
    toy = _toy()
    ch = w.data_owner(party)
    ch.call("configure_training", lr=0.2)
    losses = []
    for s in range(STEPS):
        if chaos is not None:
            chaos(owner, s)
        losses.append(ch.call("train_step", **toy.batch(s + 100 * owner))["loss"])
    out[owner] = {"losses": losses, "adapter": ch.call("export_adapter"), "recoveries": ch.recoveries}
    ch.close()


def _run_owners(w: World, parties: list[str], chaos=None) -> dict:
    out: dict = {}
    errors: list[BaseException] = []

    def work(party, owner):
        try:
            _train(w, party, owner, out, chaos)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(p, i)) for i, p in enumerate(parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def _assert_solo(toy, seed: bytes, out: dict) -> None:
    adapters = []
    for owner, res in out.items():
        ref_losses, ref = _reference(toy, seed, owner)
        assert res["losses"] == ref_losses, owner
        for key in ("a", "b"):
            assert torch.equal(res["adapter"][key], ref[key]), (owner, key)
        adapters.append(res["adapter"]["b"])
    # negative control: the owners' data differ, so their adapters do too
    assert not torch.equal(adapters[0], adapters[1])


def test_concurrent_data_owners_each_get_their_solo_adapter(tmp_path):
    """Item 2: three data owners at once -- two identities, and a second process of the first --
    each end with exactly the adapter a solo run on their own data gives."""
    toy = _toy()
    with PartyGroup(tmp_path / "run") as group:
        w = World(tmp_path, group, owners=2).start()
        out = _run_owners(w, ["data-owner", "data-owner-2", "data-owner"])
        seed = w.seed()
    assert sorted(out) == [0, 1, 2]
    _assert_solo(toy, seed, out)


def test_concurrent_data_owners_survive_kill_9_of_the_enclave(tmp_path):
    """Item 2, kill -9 variant: two data owners train while the enclave is killed and restarted;
    neither loses a step, and each still ends with its solo adapter."""
    toy = _toy()
    killed = threading.Event()

    def chaos(owner: int, step: int) -> None:
        if owner == 0 and step == 5 and not killed.is_set():
            killed.set()
            w.enclave.kill()
            w.enclave.start()

    with PartyGroup(tmp_path / "run") as group:
        w = World(tmp_path, group, owners=2, k=2).start()
        out = _run_owners(w, ["data-owner", "data-owner-2"], chaos)
        seed = w.seed()
    assert killed.is_set() and out[0]["recoveries"] >= 1
    _assert_solo(toy, seed, out)


def test_restarted_enclave_reaches_the_cloud_before_an_upload(tmp_path):
    """Item 9: after the enclave and then (late) the cloud restart, the first upload succeeds; a
    data owner that comes before any upload gets a clear message that names no enclave path."""
    with PartyGroup(tmp_path / "run") as group:
        w = World(tmp_path, group).start(upload=False)
        with pytest.raises(
            ProtocolError, match="no complete model yet: the model owner must upload one"
        ) as err:
            w.data_owner()
        assert str(w.state) not in str(err.value)
        w.enclave.kill()
        w.enclave.start()
        w.cloud.kill()
        w.cloud.start()
        w.upload()  # first try
        ch = w.data_owner()
        assert ch.call("runtime_status")["calls"] == 0
        ch.close()


def test_unmeasured_factory_code_is_refused(tmp_path):
    """Item 1: a factory that pulls in code outside the measurement is refused at start-up; a
    factory file itself is measured, so a verifier that does not expect it refuses the enclave."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "helper_mod.py").write_text("STOLEN = []\n")
    (spy_dir / "spy.py").write_text(
        f"import sys\nsys.path.insert(0, {str(spy_dir)!r})\nimport helper_mod\n"
        "def make_enclave(cloud, seed, key):\n    return object()\n"
    )
    keys = tmp_path / "keys"
    init_keys(keys)
    argv = enclave_argv(
        keys / "enclave", "127.0.0.1:1", tmp_path / "state", checkpoint_every=1, settings={},
        factory=f"{spy_dir / 'spy.py'}:make_enclave",
    )  # fmt: skip
    res = subprocess.run(
        [a.replace("{ready}", str(tmp_path / "r.json")) for a in argv], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "code outside the measurement is loaded (helper_mod" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # negative control / measured factory: the toy factory file changes the measurement
    assert code_measurement([TOY]) != code_measurement()
    with PartyGroup(tmp_path / "run") as group:
        w = World(tmp_path / "w", group).start(upload=False)
        with pytest.raises(SecurityError, match="measurement .* is not the expected"):
            connect_attested(w.enclave.url, w.keys / "model-owner", "model-owner")  # expects no factory
