"""Shared CKKS fixtures: one N=8192 key pair per test session (key generation is the slow part)."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.fhe import ccops
from p3eft.fhe.context import keygen
from p3eft.fhe.linalg import StaggeredMatrix, staggered_steps
from p3eft.fhe.params import get_param_set

SHAPES = [(64, 64), (48, 100), (200, 64), (256, 256)]


@pytest.fixture(scope="session")
def n8192():
    """(context, secret key) at N=8192 with the rotation keys the N=8192 tests use."""
    ps = get_param_set("N8192")
    steps: set[int] = {1}
    for n_out, n_in in SHAPES:
        steps.update(staggered_steps(n_out, n_in, ps.slots))
        steps.update(StaggeredMatrix.restagger_steps_for(min(n_out, n_in), ps.slots))
    steps.update(ccops.dot_rows_steps(16) + ccops.broadcast_steps(16, ps.slots))
    steps.update(ccops.rotate_rows_steps(4, 16) + ccops.sum_rows_steps(4, 16))
    return keygen(ps, sorted(steps))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
