"""Fixtures for every test: each test starts from, and leaves behind, the same process state.

Why: a test's outcome must not depend on which tests ran before it (a numeric guard once passed or
failed with the run order). Tests may change torch's thread count, the torch/numpy/python random
states and environment variables (``P3EFT_*``, ``HF_HUB_OFFLINE``); this fixture starts each test
from fixed values and puts the old ones back afterwards.

One torch thread per test: the thread count changes the order of floating-point reductions, and on
CI's 2 shared cores an oversubscribed 2-thread SmolLM2 step took 7 s against 0.5 s with one thread
(measured on our dev machine). Subprocesses get ``OMP_NUM_THREADS=1`` in the tests that spawn them.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

SEED = 0  # every test starts from the same random state, whatever ran before


@pytest.fixture(autouse=True, scope="session")
def _sealing_key_outside_home(tmp_path_factory):
    """In-process ObfuscaTune runs keep their simulated platform sealing key in ~/.config/p3eft unless
    ``P3EFT_SEALING_KEY`` names a file; the tests use a temporary one and never touch the user's."""
    old = os.environ.get("P3EFT_SEALING_KEY")
    os.environ["P3EFT_SEALING_KEY"] = str(tmp_path_factory.mktemp("sealing") / "enclave-sealing.key")
    yield
    if old is None:
        os.environ.pop("P3EFT_SEALING_KEY", None)
    else:
        os.environ["P3EFT_SEALING_KEY"] = old


@pytest.fixture(autouse=True)
def _restore_process_state(_sealing_key_outside_home):
    threads = torch.get_num_threads()
    torch_rng = torch.get_rng_state()
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    env = dict(os.environ)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)
    for key in set(os.environ) - set(env):
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
