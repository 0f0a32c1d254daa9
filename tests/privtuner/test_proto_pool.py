"""The model owner's kernel pool (``ModelOwner(workers=N)``): its plaintext-weight products are the
one-process ciphertexts bit for bit, a step through it agrees with one without it, its workers' CPU
is the model owner's, and it stops with its session."""

from __future__ import annotations

import time

import numpy as np
import pytest

from p3eft.channel import InProcessChannel
from p3eft.errors import P3eftError
from p3eft.fhe import serial
from p3eft.fhe.context import keygen
from p3eft.fhe.parallel import KernelPool
from p3eft.fhe.refresh import LocalRefresher
from p3eft.privtuner.adapter import peft_names
from p3eft.privtuner.backend import CipherBackend, Linear
from p3eft.privtuner.kernels import RowsKernel
from p3eft.privtuner.packing import PackingSpec
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner
from p3eft.privtuner.toy import calibrated
from p3eft.privtuner.wiring import BertBackend, BertCodec

from .conftest import pool_workers, wait_gone


def test_linear_layers_on_the_pool_are_the_local_ciphertexts():
    """Two token ciphertexts (a 300-token shape), a row mask and per-slot scales that differ between
    them, a bias and an offset: every output ciphertext is the one-process one, byte for byte."""
    model, report, _, _ = calibrated()
    spec = PackingSpec.build(hidden=16, max_len=300, slots=model.cfg.params.slots)
    assert spec.cts == 2
    # only the rotations a linear layer uses (kernel steps, the replication): the attention's row
    # rotations of a 512-row geometry would be hundreds of keys
    steps = RowsKernel(np.eye(spec.width), spec.block, spec.slots).galois_steps() + [-spec.width]
    ctx, sk = keygen(model.cfg.params, steps)
    ref = LocalRefresher(ctx, sk, 64.0, 30)
    rng = np.random.default_rng(3)
    mask = np.ones(spec.seq)
    mask[280:] = 0.0
    scale = rng.uniform(0.5, 2.0, (spec.seq, spec.width))
    lin = Linear(
        "t", rng.normal(size=(16, 16)) / 4, rng.normal(size=16), mask, scale, rng.normal(size=(spec.seq, 16))
    )
    x = [ctx.encrypt_slots(s, spec.layout()) for s in spec.pack_matrix(rng.uniform(-1, 1, (spec.seq, 16)))]
    here = CipherBackend(ctx, spec, report.fns, ref).lin(lin, x)
    with KernelPool(ctx.to_payload(), workers=2) as pool:
        pooled = CipherBackend(ctx, spec, report.fns, ref, pool).lin(lin, x)
        assert pool.worker_cpu_s > 0
    assert len(pooled) == 2
    for a, b in zip(here, pooled, strict=True):
        assert serial.seal_to_bytes(a.seal) == serial.seal_to_bytes(b.seal) and a.layout == b.layout
    ys = [sk.decrypt_slots(ctx, c) for c in pooled]
    assert np.abs(ys[0] - ys[1]).max() > 1e-2  # two different ciphertexts, not one twice


def _step(workers: int):
    model, report, params, _ = calibrated()
    backend = BertBackend(model.cfg, model=model, calibration=report, init_params=params)
    mo = ModelOwner(backend, workers=workers)
    do = DataOwner(InProcessChannel(mo), BertCodec, DataOwnerConfig(lr=0.5))
    session = next(iter(mo._sessions.values()))
    pids = [] if session.pool is None else session.pool.pids
    do.train_step([("a fine film", 1)])
    z = do.last_step_logits[0]
    adapter = do.decrypt_adapter()
    server_cpu = do.ledger.server_cpu_s
    worker_cpu = 0.0 if session.pool is None else session.pool.worker_cpu_s
    do.close()
    return z, adapter, pids, server_cpu, worker_cpu


@pytest.mark.slow
def test_a_training_step_with_workers_agrees_with_one_without():
    z1, a1, _, _, _ = _step(1)
    z2, a2, pids, server_cpu, worker_cpu = _step(2)
    assert len(pids) == 2
    # only encryption noise differs (fresh keys, refresh masks, re-randomising). Two runs without
    # workers differed by 2.7e-6 in the logits and by at most 7e-5 of a tensor's largest entry in the
    # adapter (the head's weights are up to 16: its standardization is folded back in)
    assert np.abs(z1 - z2).max() < 1e-4
    for k in a1:
        assert np.abs(a1[k] - a2[k]).max() < 1e-3 * np.abs(a1[k]).max(), k
    model, report, params, _ = calibrated()
    before = peft_names(model.plain_params(params, report.fns.head_std))
    assert max(np.abs(a2[k] - before[k]).max() for k in before) > 1e-3  # the step moved the adapter
    assert worker_cpu > 0 and server_cpu >= worker_cpu  # the workers' CPU is the model owner's
    assert not wait_gone(pids)  # stopped with the session


@pytest.mark.parametrize("workers", [0, -1, 33, 2.0, "2", True])
def test_bad_worker_counts_are_refused(workers):
    model, report, params, _ = calibrated()
    backend = BertBackend(model.cfg, model=model, calibration=report, init_params=params)
    with pytest.raises(P3eftError, match="workers"):
        ModelOwner(backend, workers=workers)


def test_a_second_key_upload_is_refused_before_any_pool_starts(toy, monkeypatch):
    """A data owner that uploads its keys again (or a hostile one, to make the model owner spawn
    processes) is refused before a pool is built: one pool per session, ever."""
    from p3eft.errors import ProtocolError
    from p3eft.privtuner import protocol as P
    from p3eft.privtuner import roles

    started = []

    class CountingPool(KernelPool):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(roles, "KernelPool", CountingPool)
    mo = ModelOwner(toy.ToyBackend(), workers=2)
    do = DataOwner(InProcessChannel(mo), toy.ToyCodec, DataOwnerConfig(lr=0.5))
    session = next(iter(mo._sessions.values()))
    before = session.pool.pids
    assert len(before) == 2 and len(started) == 1
    kids = pool_workers()
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="already has its data owner's keys"):
        do.channel.call(P.KEYS, session=do.setup.session, keys=do.ctx.to_payload())
    assert time.monotonic() - t0 < 5.0  # refused before the keys are parsed or workers started
    # no second pool, not even one started and closed again (the check that fails without the fix)
    assert len(started) == 1
    assert session.pool.pids == before and set(pool_workers()) <= set(kids)  # nothing new
    do.close()
