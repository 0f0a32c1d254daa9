"""Parties as real processes (toy roles): kill -9 the cloud or the enclave mid-call, restart it,
and the run resumes from the last sealed checkpoint with the same final adapter as an uninterrupted
run (bit for bit)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

from p3eft.channel import InProcessChannel
from p3eft.runtime.connect import open_enclave_channel
from p3eft.runtime.launch import PartyGroup, connect_attested, p3eft_argv
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


def _reference(toy, seed: bytes) -> tuple[list[float], dict]:
    enclave = InProcessChannel(toy.make_enclave(InProcessChannel(toy.make_cloud()), seed))
    for chunk in toy.model_chunks():
        enclave.call("provision", **chunk)
    enclave.call("configure_training", lr=0.2)
    losses = [enclave.call("train_step", **toy.batch(s))["loss"] for s in range(STEPS)]
    return losses, enclave.call("export_adapter")


def _later(delay: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def test_kill_cloud_and_enclave_mid_call_resumes_exactly(tmp_path):
    toy = _toy()
    certs, state = tmp_path / "certs", tmp_path / "state"
    init_keys(certs)
    cport, eport = _free_port(), _free_port()
    cloud_argv = p3eft_argv(
        "serve",
        "cloud",
        "--certs",
        str(certs),
        "--port",
        str(cport),
        "--ready-file",
        "{ready}",
        "--factory",
        f"{TOY}:make_cloud",
    )
    enclave_argv = p3eft_argv(
        "serve",
        "enclave",
        "--certs",
        str(certs),
        "--cloud",
        f"127.0.0.1:{cport}",
        "--state-dir",
        str(state),
        "--checkpoint-every",
        str(K),
        "--port",
        str(eport),
        "--ready-file",
        "{ready}",
        "--factory",
        f"{TOY}:make_enclave",
    )
    with PartyGroup(tmp_path / "run") as group:
        cloud = group.start("cloud", cloud_argv)
        enclave = group.start("enclave", enclave_argv)
        with connect_attested(enclave.url, certs, "model-owner") as mo:
            for chunk in toy.model_chunks():
                mo.call("provision", **chunk)
        ch = open_enclave_channel(enclave.url, certs)
        ch.call("configure_training", lr=0.2)
        losses = []
        for s in range(STEPS):
            b = toy.batch(s)
            if s == 4:  # kill -9 the cloud while it is inside forward, restart it on the same port
                _later(0.3, lambda: (cloud.kill(), cloud.start()))
                losses.append(ch.call("train_step", **b, delay=1.0)["loss"])
            elif s == 7:  # kill -9 the enclave during the call, restart it from its sealed state
                _later(0.3, lambda: (enclave.kill(), enclave.start()))
                losses.append(ch.call("train_step", **b, delay=1.0)["loss"])
            else:
                losses.append(ch.call("train_step", **b)["loss"])
        status = ch.call("runtime_status")
        final = ch.call("export_adapter")
        ch.close()
    assert ch.recoveries == 2
    assert status["restores"] >= 1 and status["calls"] == STEPS + 1  # configure_training + steps
    # the reference uses the enclave's sealed session seed: read it back through the same sealer
    from p3eft.runtime.attestation import code_measurement
    from p3eft.runtime.launch import enclave_sealer

    seed = enclave_sealer(certs, code_measurement()).read(state / "host.sealed", "p3eft-host")["session_seed"]
    ref_losses, ref = _reference(toy, seed)
    assert losses == ref_losses
    for key in ("a", "b"):
        assert torch.equal(final[key], ref[key]), key
