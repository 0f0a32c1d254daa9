"""Shared fixtures of the PrivTuner protocol tests: the toy encrypted backend and dev certificates."""

from __future__ import annotations

import importlib.util
import sys
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
