"""The SST-2 experiment driver (p3eft.privtuner.experiment) on a very small BERT: the schedule, the
minibatch SGD shared by plaintext LoRA and the twin, the dev-set size, and the JSON it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from p3eft.errors import P3eftError
from p3eft.privtuner.experiment import (
    ExperimentConfig,
    compare,
    main,
    markdown,
    plain_lora,
    run,
    schedule,
    twin_run,
    wilson,
)
from p3eft.privtuner.twin import PrivTunerModel, Twin
from p3eft.privtuner.wiring import Tokens, settings


class _Backend:  # what plain_lora reads from the model owner's backend
    def __init__(self, model: PrivTunerModel) -> None:
        self.model = model


def test_schedule_is_a_seeded_permutation_per_epoch_cut_into_batches():
    steps = schedule(7, epochs=2, batch=3, seed=0)
    assert [len(b) for b in steps] == [3, 3, 1, 3, 3, 1]
    first, second = sum(steps[:3], []), sum(steps[3:], [])
    assert sorted(first) == sorted(second) == list(range(7))
    assert first != second  # each epoch has its own order
    assert steps == schedule(7, epochs=2, batch=3, seed=0)
    assert steps != schedule(7, epochs=2, batch=3, seed=1)


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = wilson(81, 100)  # Wilson 95% interval of 81/100: [0.7222, 0.8749]
    assert lo == pytest.approx(0.7222, abs=1e-4) and hi == pytest.approx(0.8749, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35


def test_minibatch_plain_lora_in_torch_equals_the_exact_twin():
    """Batch 2, 2 epochs, shuffled: torch + peft and the exact twin make the same updates."""
    cfg = settings(model="tiny", layers=2, max_len=8, rank=2, alpha=4.0, lr=0.5)
    model = PrivTunerModel(cfg)
    tokens = Tokens("tiny", int(model.weights.word.shape[0]), 0, model.spec.seq, cfg.max_len)
    texts = [("a good movie", 1), ("dull and long", 0), ("great fun", 1), ("awful", 0), ("fine", 1)]
    train = [tokens.example(t, y) for t, y in texts]
    init = model.init_params(seed=0, b_scale=0.1)
    steps = schedule(len(train), epochs=2, batch=2, seed=3)
    losses, preds = plain_lora(cfg, _Backend(model), init, train, train, steps)
    twin_losses, twin_preds = twin_run(Twin(model, exact=True), init, train, train, steps, cfg.lr)
    assert len(losses) == len(twin_losses) == 10
    assert np.allclose(losses, twin_losses, atol=1e-9)
    assert list(preds) == list(twin_preds)
    # negative control: per-example updates in the same order give other losses
    single = [[i] for b in steps for i in b]
    other, _ = plain_lora(cfg, _Backend(model), init, train, train, single)
    assert np.max(np.abs(np.subtract(other, losses))) > 1e-6


def test_adam_on_the_twin_equals_torch_adam():
    """The plaintext-only Adam recipe: the exact twin's elementwise Adam on its logical matrices makes
    torch.optim.Adam's updates (replicated entries get equal gradients)."""
    cfg = settings(model="tiny", layers=2, max_len=8, rank=2, alpha=4.0, lr=0.01)
    model = PrivTunerModel(cfg)
    tokens = Tokens("tiny", int(model.weights.word.shape[0]), 0, model.spec.seq, cfg.max_len)
    texts = [("a good movie", 1), ("dull and long", 0), ("great fun", 1), ("awful", 0)]
    train = [tokens.example(t, y) for t, y in texts]
    init = model.init_params(seed=0)  # B = 0, as in the experiment
    steps = schedule(len(train), epochs=3, batch=2, seed=1)
    losses, preds = plain_lora(cfg, _Backend(model), init, train, train, steps, "adam")
    twin_losses, twin_preds = twin_run(
        Twin(model, exact=True), init, train, train, steps, cfg.lr, optimizer="adam"
    )
    assert np.allclose(losses, twin_losses, atol=1e-8)
    assert list(preds) == list(twin_preds)
    sgd, _ = plain_lora(cfg, _Backend(model), init, train, train, steps, "sgd")
    assert np.max(np.abs(np.subtract(sgd, losses))) > 1e-4  # negative control: SGD differs


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_experiment_phase_one_on_the_tiny_bert(tmp_path, optimizer):
    """Real SST-2 text (the data folder), the tiny BERT: calibration, both trainings, the JSON."""
    ecfg = ExperimentConfig(
        model="tiny",
        layers=2,
        max_len=8,
        rank=2,
        alpha=4.0,
        lr=0.5 if optimizer == "sgd" else 0.01,
        train=6,
        epochs=2,
        batch=2,
        dev=7,
        optimizer=optimizer,
        phases=("plain_twin",),
        # the plain head: this checks that the twin tracks plaintext LoRA through the approximations;
        # standardizing the head amplifies their error on this random tiny model, whose pooled features
        # spread by only ~4e-4 (test_proto_standardize.py covers the standardized head)
        head_standardize=False,
    )
    out = tmp_path / "sst2.json"
    res = run(ecfg, out, say=lambda m: None)
    written = json.loads(out.read_text())
    pt = written["plain_twin"]
    assert written["phases_done"] == ["plain_twin"] == res["phases_done"]
    assert pt["updates"] == 6 and pt["train_examples"] == 6 and pt["dev_examples"] == 7
    runs = ("plain", "twin") if optimizer == "sgd" else ("plain", "plain_sgd", "twin")
    assert [k for k in ("plain", "plain_sgd", "twin") if k in pt] == list(runs)
    for name in runs:
        r = pt[name]
        assert r["finished"] and r["dev_examples"] == 7 and len(r["predictions"]) == 7
        assert len(r["losses"]) == 12  # 2 epochs x 6 examples
        assert r["dev_correct"] == round(r["dev_accuracy"] * 7)
        lo, hi = r["dev_accuracy_wilson95"]
        assert 0 <= lo <= r["dev_accuracy"] <= hi <= 1
        assert r["seconds"] > 0 and r["cpu_seconds"] > 0
    # the approximate twin follows plaintext LoRA on the tiny model (approximations' error only)
    assert pt["loss_max_abs_diff"] < 1e-2
    assert pt["agreement_twin_plain"] == 1.0
    assert pt["range_flags_twin"] == 0 and pt["range_flags_twin_training"] == 0
    assert pt["twin_first_flagged_update"] is None
    assert pt["accuracy_gap_twin_minus_plain"] == pytest.approx(
        pt["twin"]["dev_accuracy"] - pt["plain"]["dev_accuracy"]
    )
    text = markdown(written, "sst2.json", "sst2.png")
    assert f"| approximate twin, {optimizer} | 7 |" in text and "encrypted_train, encrypted_eval" in text


def test_bad_options_are_refused(capsys):
    with pytest.raises(P3eftError):
        ExperimentConfig(batch=0)
    with pytest.raises(P3eftError):
        ExperimentConfig(phases=("plain", "twin"))
    with pytest.raises(P3eftError):
        ExperimentConfig(optimizer="lbfgs")
    with pytest.raises(SystemExit) as stop:
        main(["--out", "/nonexistent-never-written", "--epochs", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_compare_stops_the_loss_comparison_at_the_twins_first_non_finite_loss(tmp_path):
    phase = {
        "plain": {"losses": [0.7, 0.6, 0.5, 0.4], "predictions": [1, 0, 1, 1], "dev_accuracy": 0.75},
        "twin": {"losses": [0.7, 0.65, None, 0.3], "predictions": [1, 0, 0, 0], "dev_accuracy": 0.25},
    }
    c = compare(phase)
    assert c["twin_first_nonfinite_loss"] == 2 and c["loss_examples_compared"] == 2
    assert c["loss_max_abs_diff"] == pytest.approx(0.05) and c["agreement_twin_plain"] == 0.5
    assert c["accuracy_gap_twin_minus_plain"] == pytest.approx(-0.5)
    phase["twin"]["losses"][2] = 0.45  # negative control: all finite, all four compared
    c = compare(phase)
    assert c["twin_first_nonfinite_loss"] is None and c["loss_examples_compared"] == 4
    assert c["loss_max_abs_diff"] == pytest.approx(0.1)
    # NaN is written as null (strict JSON)
    from p3eft.privtuner.experiment import _write

    _write(tmp_path / "r.json", {"x": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": [None, 1.0]}


def test_twin_run_logs_where_the_adapter_leaves_the_calibrated_ranges():
    from p3eft.privtuner.wiring import BertBackend

    cfg = settings(model="tiny", layers=2, max_len=8, rank=2, alpha=4.0, lr=0.5)
    backend = BertBackend(cfg)  # calibrated on the SST-2 calibration sentences
    twin = Twin(backend.model, backend.fns)
    texts = [("a good movie", 1), ("dull and long", 0), ("great fun", 1), ("awful", 0)]
    train = [backend.tokens.example(t, y) for t, y in texts]
    init = backend.initial_params(seed=0)
    steps = schedule(len(train), epochs=1, batch=1, seed=0)
    small: list[int] = []
    twin_run(twin, init, train, train[:1], steps, 1e-3, flags_log=small)
    assert small == [0, 0, 0, 0]  # a small step stays inside the ranges
    large: list[int] = []
    twin_run(Twin(backend.model, backend.fns), init, train, train[:1], steps, 1e3, flags_log=large)
    assert len(large) == 4 and large[-1] > 0 and large == sorted(large)


@pytest.mark.slow
def test_encrypted_phases_resume_after_a_crash(resumed_experiment):
    """The experiment's encrypted training dies right after its first checkpoint; ``resume`` goes on
    with the second update and the evaluation. The resumed run's twin continues from the checkpointed
    parameters (its second loss is the loss an uninterrupted twin has after one update) and the
    encrypted model from the restored adapter (its losses track the twin's)."""
    from p3eft.privtuner.experiment import schedule, twin_update
    from p3eft.privtuner.twin import Twin
    from p3eft.privtuner.wiring import BertBackend, settings

    _, first, refused, res = resumed_experiment
    assert "encrypted_train" not in first["phases_done"]
    assert "holds a checkpoint" in refused
    tr = res["encrypted_train"]
    assert res["phases_done"] == ["encrypted_train", "encrypted_eval"] and len(res["resumed"]) == 1
    assert tr["steps_done"] == 2 and len(tr["enc_losses"]) == 2 == len(tr["step_costs"])
    assert tr["max_abs_loss_diff"] < 1e-2
    ev = res["encrypted_eval"]
    assert ev["examples"] == 3 and ev["agreement_with_twin"] == 1.0
    # the twin on the encrypted model's own decrypted parameters: inference error only
    assert ev["agreement_with_twin_same_params"] == 1.0 and ev["logit_diff_same_params_examples"] == 3
    assert ev["max_abs_logit_diff_same_params"] < 1e-3
    # the uninterrupted twin, in plaintext: two SGD updates from the same initial adapter
    backend = BertBackend(
        settings(model="tiny", layers=1, max_len=4, rank=1, alpha=2.0, lr=0.5, head_standardize=False)
    )
    from p3eft.data import load_task

    train = load_task("sst2", "train").examples[:4]
    twin, params, losses = Twin(backend.model, backend.fns), backend.initial_params(seed=0), []
    init = params
    batches = [
        [backend.tokens.example(train[j].text, train[j].label) for j in idx]
        for idx in schedule(4, 1, 1, 0)[:2]
    ]
    for batch in batches:
        tl, params = twin_update(twin, batch, params, 0.5)
        losses.append(tl[0])
    assert tr["twin_losses"] == pytest.approx(losses, abs=1e-9)
    # negative control: a twin restarted from the initial adapter has another second loss
    assert abs(twin_update(twin, batches[1], init, 0.5)[0][0] - losses[1]) > 1e-3


def _report_input(**phases: dict) -> dict:
    """A run's JSON as the report reads it, with only the given phases."""
    return {
        "config": ExperimentConfig().__dict__,
        "weights": {"random": True, "source": "test"},
        "started": "now",
        "machine": {"cpu_model": "cpu", "cores": 2},
        "phases_done": [],
        **phases,
    }


def test_the_report_lists_every_encrypted_update_against_the_twin():
    """Phase 2's report: updates done of planned, examples per update, one row per update."""
    et = {
        "examples": 16,
        "updates": 2,
        "batch": 8,
        "steps_done": 1,
        "seconds": 3.0,
        "enc_losses": [0.69],
        "twin_losses": [0.68],
        "max_abs_loss_diff": 0.01,
    }
    res = _report_input(encrypted_train=et)
    text = markdown(res, "x.json", "x.png").split("## Phase 2")[1]
    assert "1 of 2 encrypted SGD updates ran (8 example(s) each, 16 examples in all)" in text
    assert "| 1 | 0.69000 | 0.68000 | +1.0e-02 |" in text and "| 2 |" not in text
    assert "Resumed" not in markdown(res, "x.json", "x.png")
    res |= {"resumed": ["t1", "t2"], "phase1_from": "an earlier run"}
    head = markdown(res, "x.json", "x.png").split("## Phase 2")[0]
    assert "Resumed (`--resume`) at t1, t2." in head and "Phase 1 is taken from an earlier run." in head


def test_the_report_gives_phase_3s_costs_and_adapter():
    ev = {
        "examples": 2,
        "accuracy": 0.5,
        "twin_accuracy": 0.5,
        "agreement_with_twin": 1.0,
        "max_abs_logit_diff": 1e-4,
        "costs": [{}, {}],
        "mean_costs": {
            "server_cpu_s": 60.0,
            "server_wall_s": 70.0,
            "device_cpu_s": 9.0,
            "bytes_up": 2e8,
            "bytes_down": 1e8,
            "refresh_round_trips": 220.0,
        },
        "procs": 2,
        "adapter": "adapter",
    }
    res = _report_input(encrypted_eval=ev)
    text = markdown(res, "x.json", "x.png").split("## Phase 3")[1]
    assert "(mean over the 2 with costs kept; 2 process(es) side by side)" in text
    assert "model owner 60.0 s CPU / 70.0 s wall, data owner 9.0 s CPU, 200.0 MB up, 100.0 MB down" in text
    assert "220 refresh round trips" in text and "`adapter/`" in text


def test_same_params_agreement_aligns_logits_kept_only_for_the_later_examples():
    """A run resumed from one that kept only predictions: the logit difference covers the examples
    whose encrypted logits were kept (the last ones), the agreement every example."""
    from p3eft.privtuner.experiment import same_params_agreement

    ev = {
        "predictions": [0, 1, 1, 0],
        "twin_same_params_logits": [[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.2, 0.1]],
        "logits": [[0.9, 0.6], [0.25, 0.1]],  # the last two examples only
    }
    out = same_params_agreement(ev)
    assert out["twin_same_params_predictions"] == [0, 1, 0, 0]
    assert out["agreement_with_twin_same_params"] == 0.75
    assert out["max_abs_logit_diff_same_params"] == pytest.approx(0.1)  # 0.9 - 1.0 and 0.6 - 0.5
    assert out["logit_diff_same_params_examples"] == 2
    assert "max_abs_logit_diff_same_params" not in same_params_agreement({**ev, "logits": []})


def test_an_exported_adapter_maps_back_to_the_graphs_parameters():
    """peft names and the plain head (what the data owner decrypts) -> the matrices the twin takes,
    with the head standardized again: the round trip is exact, and a foreign tensor name is refused."""
    import numpy as np

    from p3eft.errors import ProtocolError
    from p3eft.privtuner.adapter import from_peft_names, peft_names
    from p3eft.privtuner.wiring import BertBackend, settings

    backend = BertBackend(settings(model="tiny", layers=2, max_len=4, rank=2, alpha=4.0))
    assert backend.fns.head_std is not None  # the standardized head is the default: it is undone and redone
    init = backend.initial_params(seed=3)
    named = peft_names(backend.plain_params(init))
    back = backend.params_from_export(named)
    assert set(back) == set(init)
    for k in init:
        np.testing.assert_allclose(back[k], init[k], rtol=1e-12, atol=1e-12)
    assert from_peft_names(peft_names({"L1.v.B": np.ones(1)})) == {"L1.v.B": np.ones(1)}
    with pytest.raises(ProtocolError, match="not a PrivTuner adapter tensor name"):
        from_peft_names({"encoder.layer.0.attention.self.key.lora_A.weight": np.ones(1)})
