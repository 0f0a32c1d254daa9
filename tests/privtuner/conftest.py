"""Shared fixtures of the PrivTuner protocol tests: the toy encrypted backend, dev certificates, a
checkpointed SST-2 experiment run on the tiny BERT; and how the pool tests see the model owner's worker
processes."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

TOY_PATH = Path(__file__).parent / "toy_backend.py"


def _load_toy():
    name = "privtuner_toy_backend"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOY_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def toy():
    return _load_toy()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    from p3eft.runtime.pki import init_keys

    d = tmp_path_factory.mktemp("ptcerts")
    init_keys(d, data_owners=2)  # one key folder per party: DIR/model-owner, DIR/data-owner, DIR/data-owner-2
    return d


# the SST-2 experiment on the tiny BERT, small enough for CI: 2 encrypted updates, 3 dev sentences
TINY_EXPERIMENT = dict(
    model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, train=4, batch=1, dev=1,
    enc_train=2, enc_eval=3, head_standardize=False,
)  # fmt: skip
EXPERIMENT_PASSPHRASE = "test passphrase"


@pytest.fixture(scope="session")
def resumed_experiment(tmp_path_factory):
    """The experiment's encrypted phases killed right after their first checkpoint, a new run refused
    (it would lose the checkpoint), then resumed to the end, in this process. Returns the JSON's path,
    the JSON as the crash left it, the refusal and the resumed run's results."""
    from p3eft.errors import P3eftError
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner.experiment import ExperimentConfig, run

    class Crash(Exception):
        pass

    ecfg = ExperimentConfig(**TINY_EXPERIMENT, phases=("encrypted_train", "encrypted_eval"))
    out = tmp_path_factory.mktemp("experiment") / "sst2.json"
    real_save = ckpt.CheckpointDir.save

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise Crash

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ckpt.PASSPHRASE_ENV, EXPERIMENT_PASSPHRASE)
        mp.setattr(ckpt.CheckpointDir, "save", save_then_crash)
        with pytest.raises(Crash):
            run(ecfg, out, say=lambda m: None)
        first = json.loads(out.read_text())
        mp.setattr(ckpt.CheckpointDir, "save", real_save)
        with pytest.raises(P3eftError) as refused:
            run(ecfg, out, say=lambda m: None)  # a new run would lose the checkpoint
        res = run(ecfg, out, say=lambda m: None, resume=True)
    return out, first, str(refused.value), res


def pool_workers(pid: int | None = None) -> list[int]:
    """The kernel-pool processes under ``pid`` (default: this process): multiprocessing's spawned
    workers, not its resource tracker."""
    import psutil

    out = []
    for child in psutil.Process(pid or os.getpid()).children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    """Wait until none of ``pids`` runs (zombies count as gone); the ones still running after
    ``timeout_s``."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if running(p)]
    return alive
