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
    for bad in (0, ee.MAX_PROCS + 1):
        with pytest.raises(P3eftError, match="eval-procs"):
            ExperimentConfig(eval_procs=bad)
    with pytest.raises(P3eftError, match="from 1 to"):
        next(ee.in_processes(None, "nowhere", [(0, "x")], 0))


_TINY = dict(
    model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, train=2, batch=1, dev=1,
    enc_train=1, enc_eval=3, head_standardize=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One encrypted update on the tiny BERT, then 3 dev sentences in this process (checkpointed)."""
    from p3eft.privtuner import checkpoint as ckpt

    patch = pytest.MonkeyPatch()
    patch.setenv(ckpt.PASSPHRASE_ENV, "test passphrase")
    out = tmp_path_factory.mktemp("one") / "sst2.json"
    res = run(
        ExperimentConfig(**_TINY, phases=("encrypted_train", "encrypted_eval")), out, say=lambda m: None
    )
    yield out, res
    patch.undo()


@pytest.mark.slow
def test_two_processes_restored_from_the_checkpoint_give_the_in_process_results(trained, monkeypatch):
    """The same run's phase 3 again, now over 2 spawned processes (a resumed run may change
    ``eval_procs``): same predictions, logits within CKKS noise of the in-process ones and of the twin on
    the decrypted adapter, for the right sentence each (in dev order), with the children's costs."""
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner.export import exported_meta, load_exported
    from p3eft.privtuner.wiring import export_base, settings

    out, one = trained
    ev1 = one["encrypted_eval"]
    assert one["phases_done"] == ["encrypted_train", "encrypted_eval"] and ev1["examples"] == 3
    folder = out.parent / ev1["adapter"]
    meta = exported_meta(folder)
    assert meta["train_examples"] == 1 and "under encryption" in meta["trained"]
    cfg = settings(model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, head_standardize=False)
    assert load_exported(export_base(cfg), folder) is not None  # plain peft reloads it

    # a second run dir holding the same checkpoint and the JSON cut back to phase 2
    two = out.parent.parent / "two"
    two.mkdir()
    (two / "checkpoint").mkdir()
    for f in (out.parent / "checkpoint").iterdir():
        (two / "checkpoint" / f.name).write_bytes(f.read_bytes())
    cut = json.loads(out.read_text())
    cut.pop("encrypted_eval")
    cut["phases_done"] = ["encrypted_train"]
    (two / "sst2.json").write_text(json.dumps(cut))
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, "test passphrase")
    res = run(
        ExperimentConfig(**_TINY, eval_procs=2, phases=("encrypted_train", "encrypted_eval")),
        two / "sst2.json",
        say=lambda m: None,
        resume=True,
    )
    ev2 = res["encrypted_eval"]
    assert res["phases_done"] == ["encrypted_train", "encrypted_eval"]
    assert ev2["examples"] == 3 and ev2["procs"] == 2 and ev2["labels"] == ev1["labels"]
    assert ev2["predictions"] == ev1["predictions"]
    z1, z2 = np.array(ev1["logits"]), np.array(ev2["logits"])
    spread = np.max(np.abs(z1[:, None, :] - z1[None, :, :]))  # how far apart different sentences are
    assert spread > 1e-4
    assert np.max(np.abs(z2 - z1)) < spread / 10  # each row is its own sentence's
    assert ev2["max_abs_logit_diff_same_params"] < 1e-3 and ev2["agreement_with_twin_same_params"] == 1.0
    assert len(ev2["costs"]) == 3 and all(c["server_cpu_s"] > 0 and c["bytes_up"] > 0 for c in ev2["costs"])
    assert ev2["mean_costs"]["refresh_round_trips"] > 0
    assert "key_upload_bytes" in res  # from phase 2; no data owner of its own in the parent this time
    assert not mp.active_children()


@pytest.mark.slow
def test_a_process_that_cannot_open_the_checkpoint_is_an_error_not_a_hang(trained, monkeypatch):
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner.wiring import settings

    out, _ = trained
    cfg = settings(model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, head_standardize=False)
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, "a wrong passphrase")
    with pytest.raises(P3eftError, match="does not open"):
        list(ee.in_processes(cfg, out.parent / "checkpoint", [(0, "a fine film")], 1))


@pytest.mark.slow
def test_a_killed_process_is_an_error_and_its_siblings_are_stopped(trained, monkeypatch):
    from p3eft.privtuner import checkpoint as ckpt
    from p3eft.privtuner.wiring import settings

    out, _ = trained
    cfg = settings(model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, head_standardize=False)
    monkeypatch.setenv(ckpt.PASSPHRASE_ENV, "test passphrase")
    todo = [(i, f"sentence number {i}") for i in range(40)]
    # killed while starting (as the OOM killer would): no answer will ever come from it
    threading.Timer(3.0, lambda: mp.active_children()[0].kill()).start()
    t0 = time.monotonic()
    with pytest.raises(P3eftError, match="died"):
        list(ee.in_processes(cfg, out.parent / "checkpoint", todo, 2))
    assert time.monotonic() - t0 < 3.0 + 2 * ee.POLL_S + 30  # noticed at a poll, not after the work
    assert not mp.active_children()
