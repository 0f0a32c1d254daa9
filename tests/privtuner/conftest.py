"""Shared fixtures of the PrivTuner protocol tests: the toy encrypted backend and dev certificates; and
how the pool tests see the model owner's worker processes."""

from __future__ import annotations

import importlib.util
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
