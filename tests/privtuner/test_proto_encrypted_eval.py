"""Phase 3 of the SST-2 experiment across processes (p3eft.privtuner.encrypted_eval): each process a
data owner restored from the sealed checkpoint; results in dev order; failures are errors, not hangs."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

from p3eft.errors import P3eftError
from p3eft.privtuner import encrypted_eval as ee
from p3eft.privtuner.experiment import ExperimentConfig, run

from .conftest import EXPERIMENT_PASSPHRASE, TINY_EXPERIMENT, wait_gone


def _rec(i: int) -> ee.EvalRecord:
    return ee.EvalRecord(i, [float(i), -float(i)], {"server_cpu_s": 1.0 + i}, 0.1)


def test_records_come_out_in_dev_order_and_a_gap_holds_back_what_follows():
    adapter = ee.Adapter({"w": np.zeros(1)})
    items = [_rec(5), adapter, _rec(7), _rec(4), _rec(6), _rec(9)]
    out = list(ee.in_index_order(items, first=4))
    assert out[0] is adapter
    assert [r.index for r in out[1:]] == [4, 5, 6, 7]  # 9 waits for 8, which never came: dropped
    assert [r.index for r in ee.in_index_order([_rec(1), _rec(2)], first=0)] == []


def test_mean_costs_per_inference():
    got = ee.summary_costs([{"server_cpu_s": 2.0, "bytes_up": 10}, {"server_cpu_s": 4.0, "bytes_up": 30}])
    assert got["server_cpu_s"] == 3.0 and got["bytes_up"] == 20.0 and got["refresh_round_trips"] == 0.0
    assert ee.summary_costs([]) == {}


def test_bad_process_counts_are_refused():
    """Phase 3's processes and the model owner's pool: each count checked where it is set."""
    for bad in (0, ee.MAX_PROCS + 1):
        with pytest.raises(P3eftError, match="eval-procs"):
            ExperimentConfig(eval_procs=bad)
    for bad in (0, 33):
        with pytest.raises(P3eftError, match="--workers"):
            ExperimentConfig(workers=bad)
    with pytest.raises(P3eftError, match="from 1 to"):
        next(ee.in_processes(None, "nowhere", [(0, "x")], 0))


def _configs(res: dict, **changes):
    """The experiment's and the session's configuration of a run, from its JSON."""
    from p3eft.privtuner.wiring import settings

    c = res["config"] | changes
    ecfg = ExperimentConfig(**{k: v for k, v in c.items() if k != "phases"}, phases=tuple(c["phases"]))
    keys = ("model", "layers", "max_len", "rank", "alpha", "lr", "head_standardize")
    return ecfg, settings(**{k: c[k] for k in keys})


@pytest.mark.slow
def test_a_process_that_cannot_open_the_checkpoint_is_an_error_not_a_hang(resumed_experiment, monkeypatch):
    from p3eft.privtuner import checkpoint as ckpt

    out, _, _, res = resumed_experiment
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, "a wrong passphrase")
    with pytest.raises(P3eftError, match="does not open"):
        list(ee.in_processes(_configs(res)[1], out.parent / "checkpoint", [(0, "a fine film")], 1))
    assert not mp.active_children()


@pytest.mark.slow
def test_a_killed_process_is_an_error_and_its_siblings_are_stopped(resumed_experiment, monkeypatch):
    from p3eft.privtuner import checkpoint as ckpt

    out, _, _, res = resumed_experiment
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, "test passphrase")
    todo = [(i, f"sentence number {i}") for i in range(40)]
    # killed while starting (as the OOM killer would): no answer will ever come from it
    threading.Timer(3.0, lambda: mp.active_children()[0].kill()).start()
    t0 = time.monotonic()
    with pytest.raises(P3eftError, match="died"):
        list(ee.in_processes(_configs(res)[1], out.parent / "checkpoint", todo, 2))
    assert time.monotonic() - t0 < 3.0 + 2 * ee.POLL_S + 30  # noticed at a poll, not after the work
    assert not mp.active_children()


_ORPHAN_SCRIPT = """
import json, sys
from p3eft.privtuner import encrypted_eval as ee
from p3eft.privtuner.wiring import settings
cfg = settings(**json.loads(sys.argv[2]))
for item in ee.in_processes(cfg, sys.argv[1], [(i, "a fine film") for i in range(40)], 2):
    pass
"""


@pytest.mark.slow
def test_phase_3_processes_exit_when_their_parent_is_killed(resumed_experiment, monkeypatch):
    """A parent killed with SIGKILL (a session's end, the OOM killer) leaves no process computing."""
    import os
    import subprocess
    import sys

    import psutil

    from p3eft.privtuner import checkpoint as ckpt

    out, _, _, res = resumed_experiment
    keys = ("model", "layers", "max_len", "rank", "alpha", "lr", "head_standardize")
    env = os.environ | {ckpt.PASSPHRASE_ENV: "test passphrase"}
    args = [str(out.parent / "checkpoint"), json.dumps({k: res["config"][k] for k in keys})]
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, *args], env=env)
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while len(kids) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            procs = psutil.Process(parent.pid).children()
            kids = [p.pid for p in procs if "spawn_main" in " ".join(p.cmdline())]
        assert len(kids) == 2, "the two phase 3 processes did not start"
        time.sleep(5.0)  # they are importing, building the model, loading the keys
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(kids, timeout_s=30) == []


def test_phase_3_in_processes_without_a_passphrase_is_refused_before_any_training(tmp_path, monkeypatch):
    """Its processes restore from the sealed checkpoint, which a run without the passphrase never
    writes: refused at the start, not after phase 2's hours."""
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner import wiring

    loaded = []
    monkeypatch.setattr(wiring, "BertBackend", lambda *a, **k: loaded.append(1))  # the run's first work
    monkeypatch.delenv(ckpt.PASSPHRASE_ENV, raising=False)
    ecfg = ExperimentConfig(**TINY_EXPERIMENT, phases=("encrypted_train", "encrypted_eval"), eval_procs=2)
    with pytest.raises(P3eftError, match=ckpt.PASSPHRASE_ENV):
        run(ecfg, tmp_path / "sst2.json", say=lambda m: None)
    assert loaded == [] and not (tmp_path / "sst2.json").exists()


@pytest.mark.slow
def test_a_run_with_phase_3_in_processes_gives_the_in_process_results(
    resumed_experiment, tmp_path, monkeypatch
):
    """The in-process run again with ``eval_procs=2``. Phase 2 runs in a spawned process (SEAL keeps a
    session's memory until its process ends, and phase 3's processes need it): no data owner is ever
    built in this process. Phase 3 runs over 2 processes, each restored from the sealed checkpoint.
    The run gives what the in-process run gave: the same twin, encrypted losses and predictions within
    CKKS noise, each sentence's logits in dev order, the children's costs, and an adapter that peft
    reloads. (One test for both, since each multi-process run costs about a minute.)"""
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner.export import exported_meta, load_exported
    from p3eft.privtuner.roles import DataOwner
    from p3eft.privtuner.wiring import export_base

    one = resumed_experiment[3]
    built = []
    real_init = DataOwner.__init__

    def counted(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DataOwner, "__init__", counted)  # this process only: the spawned ones import anew
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, EXPERIMENT_PASSPHRASE)
    ecfg = ExperimentConfig(**TINY_EXPERIMENT, phases=("encrypted_train", "encrypted_eval"), eval_procs=2)
    said: list[str] = []
    res = run(ecfg, tmp_path / "sst2.json", say=said.append)
    assert built == [] and any("process of its own" in m for m in said)
    assert res["phases_done"] == ["encrypted_train", "encrypted_eval"] and res["key_upload_bytes"] > 0
    tr, tr1 = res["encrypted_train"], one["encrypted_train"]
    assert tr["steps_done"] == 2 and tr["twin_losses"] == tr1["twin_losses"]
    assert np.max(np.abs(np.subtract(tr["enc_losses"], tr1["enc_losses"]))) < 1e-3
    ev, ev1 = res["encrypted_eval"], one["encrypted_eval"]
    assert ev["examples"] == 3 and ev["procs"] == 2 and ev["labels"] == ev1["labels"]
    assert ev["predictions"] == ev1["predictions"]
    # each row is its own sentence's: nearer to that sentence's in-process logits than to any other's
    z1, z2 = np.array(ev1["logits"]), np.array(ev["logits"])
    d = np.max(np.abs(z2[:, None, :] - z1[None, :, :]), axis=-1)
    assert np.max(np.diag(d)) < 1e-5 and np.max(np.diag(d)) * 3 < np.min(d[~np.eye(3, dtype=bool)]), d
    assert ev["agreement_with_twin_same_params"] == 1.0 and ev["max_abs_logit_diff_same_params"] < 1e-3
    assert len(ev["costs"]) == 3 and all(c["server_cpu_s"] > 0 and c["bytes_up"] > 0 for c in ev["costs"])
    assert ev["mean_costs"]["refresh_round_trips"] > 0
    folder = (tmp_path / "sst2.json").parent / ev["adapter"]
    meta = exported_meta(folder)
    assert meta["train_examples"] == 2 and "under encryption" in meta["trained"]
    assert load_exported(export_base(_configs(res)[1]), folder) is not None  # plain peft reloads it
    written = json.loads((tmp_path / "sst2.json").read_text())
    # the spawned process resumed the run; the run as written is one run, with its own phases
    assert "resumed" not in written and written["config"]["phases"] == ["encrypted_train", "encrypted_eval"]
    assert not mp.active_children()


def test_phase_2_process_killed_without_a_word_is_named_as_killed():
    """The OOM killer's SIGKILL leaves phase 2's pipe closed with nothing in it: the run's error says
    the process was killed (it was an EOFError from the pipe, naming nothing)."""
    from p3eft.privtuner.experiment import child_failure

    receive, send = mp.Pipe(duplex=False)
    send.close()
    assert child_failure(receive, -9) == "phase 2's process was killed (signal 9; for memory?)"
    receive, send = mp.Pipe(duplex=False)
    send.close()
    assert child_failure(receive, 2) == "phase 2's process failed (exit code 2)"
    receive, send = mp.Pipe(duplex=False)
    send.send("phase 2: a refusal")
    send.close()
    assert child_failure(receive, 2) == "phase 2: a refusal"
    receive, send = mp.Pipe(duplex=False)
    send.send(None)
    assert child_failure(receive, 0) is None
