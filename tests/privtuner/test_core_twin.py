"""The twin: exact mode equals transformers/peft; approximate mode stays within the approximations'
error; calibration flags out-of-range inputs; the rotation is removed exactly; packing round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p3eft.privtuner.approx import build
from p3eft.privtuner.calibration import check_ranges
from p3eft.privtuner.graph import EncoderGraph
from p3eft.privtuner.model import tiny_hf_model
from p3eft.privtuner.packing import PackingSpec
from p3eft.privtuner.rotation import recover_rotation
from p3eft.privtuner.toy import calibrated, random_examples, tiny_model
from p3eft.privtuner.twin import Twin


def _hf_logits(hf, ex) -> np.ndarray:
    mask = (np.arange(len(ex.ids)) < ex.length).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ex.ids[None]), attention_mask=torch.tensor(mask[None]))
    return out.logits[0].double().numpy()


def test_exact_twin_equals_transformers():
    model = tiny_model(layers=2, hidden=32, max_len=8)
    hf = tiny_hf_model(hidden=32, intermediate=64, layers=2)
    params = model.init_params(b_scale=0.0)  # B = 0: the LoRA branch adds nothing, as in transformers
    twin = Twin(model, exact=True)
    for ex in random_examples(model, 3):
        ours, ref = twin.logits(ex, params), _hf_logits(hf, ex)
        assert np.max(np.abs(ours - ref)) < 1e-6
        assert np.max(np.abs(ref)) > 1e-3  # not a trivially zero comparison


def test_exact_twin_gradients_equal_peft_autograd():
    from peft import LoraConfig, get_peft_model

    model = tiny_model(layers=2, hidden=32, max_len=8)
    params = model.init_params(b_scale=0.3)
    plain = model.plain_params(params)
    cfg = LoraConfig(
        r=2, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS", lora_dropout=0.0
    )
    pm = get_peft_model(tiny_hf_model(hidden=32, intermediate=64, layers=2), cfg).double()
    for name, p in pm.named_parameters():
        for li in range(2):
            for short, long in (("q", "query"), ("v", "value")):
                for ab in ("A", "B"):
                    if f"layer.{li}.attention.self.{long}.lora_{ab}" in name:
                        p.data = torch.tensor(plain[f"L{li}.{short}.{ab}"])
    ex = random_examples(model, 1, seed=3)[0]
    mask = (np.arange(len(ex.ids)) < ex.length).astype(np.int64)
    out = pm(
        input_ids=torch.tensor(ex.ids[None]),
        attention_mask=torch.tensor(mask[None]),
        labels=torch.tensor([ex.label]),
    )
    out.loss.backward()
    loss, _, grads = Twin(model, exact=True).gradients(ex, params)
    ours = model.plain_params(grads)
    assert abs(loss - out.loss.item()) < 1e-10
    checked = 0
    for name, p in pm.named_parameters():
        if p.grad is None:
            continue
        for li in range(2):
            for short, long in (("q", "query"), ("v", "value")):
                for ab in ("A", "B"):
                    if f"layer.{li}.attention.self.{long}.lora_{ab}" in name:
                        ref = p.grad.numpy()
                        assert np.max(np.abs(ours[f"L{li}.{short}.{ab}"] - ref)) <= 1e-9 * max(
                            1.0, np.abs(ref).max()
                        )
                        assert np.abs(ref).max() > 0
                        checked += 1
        if "classifier" in name and name.endswith("weight"):
            assert np.max(np.abs(ours["head.W"] - p.grad.numpy())) < 1e-10
            checked += 1
    assert checked == 9


def test_approximate_twin_close_to_exact():
    model, report, params, examples = calibrated()
    approx, exact = Twin(model, report.fns), Twin(model, report.fns, exact=True)
    worst = 0.0
    for ex in examples:
        worst = max(worst, float(np.max(np.abs(approx.logits(ex, params) - exact.logits(ex, params)))))
    # every site's approximation error is below 2e-3 on its range (approx.build's tolerance)
    assert all(fn.approximation.max_error() <= 2e-3 for fn in report.fns.flat())
    assert 0.0 < worst < 1e-2
    assert not approx.flags


def test_calibration_flags_out_of_range_inputs():
    model, report, params, examples = calibrated()
    assert check_ranges(Twin(model, report.fns), examples, params) == []  # negative control
    fns = report.fns.copy()
    g = report.fns["L0.gelu"]
    k = int(np.argmax(np.bincount(g.slot_class.ravel())))  # the class with the most slots
    c = g.classes[k]
    mid, half = (c.lo + c.hi) / 2, (c.hi - c.lo) / 64
    narrowed = build("L0.gelu", mid - half, mid + half, arg_scale=c.arg_scale, arg_offset=c.arg_offset)
    fns["L0.gelu"] = g.with_class(k, narrowed)
    flags = check_ranges(Twin(model, fns), examples, params)
    assert flags and all(f.site == "L0.gelu" and f.slot_class == k for f in flags)
    assert flags[0].observed[0] < narrowed.lo or flags[0].observed[1] > narrowed.hi


def test_rotation_is_removed_exactly_and_revealed_by_procrustes():
    model, _, params, examples = calibrated()
    plain = tiny_model()
    plain._rotation = np.eye(model.weights.hidden)
    plain.graph = EncoderGraph(plain.weights, plain.cfg, plain.spec, plain._rotation)
    for ex in examples[:2]:
        a = Twin(model, exact=True).logits(ex, params)
        b = Twin(plain, exact=True).logits(ex, params)
        assert np.max(np.abs(a - b)) < 1e-12
    tables = model.rotated_tables()
    assert np.max(np.abs(tables["word"] - model.weights.word)) > 1e-3  # the table is changed...
    rot = recover_rotation(model.weights.word, tables["word"])  # ...but anyone with the original undoes it
    assert np.allclose(rot, model._rotation, atol=1e-9)
    assert np.allclose(tables["word"] @ tables["word"].T, model.weights.word @ model.weights.word.T)


@pytest.mark.parametrize("hidden,max_len,slots", [(16, 4, 8192), (128, 64, 8192), (384, 16, 8192)])
def test_packing_round_trip(hidden, max_len, slots):
    spec = PackingSpec.build(hidden, max_len, slots)
    assert spec.seq >= max_len and spec.rows_per_ct * spec.block == slots
    m = np.random.default_rng(0).standard_normal((spec.seq, spec.width))
    vecs = spec.pack_matrix(m)
    assert len(vecs) == spec.cts
    assert np.array_equal(spec.unpack_matrix(vecs), m)


def test_twin_training_lowers_the_loss():
    model, report, params, examples = calibrated()
    twin = Twin(model, report.fns)
    before = np.mean([twin.gradients(ex, params)[0] for ex in examples])
    trained, losses = twin.train(examples, params, lr=0.05, epochs=15)
    after = np.mean([twin.gradients(ex, trained)[0] for ex in examples])
    assert len(losses) == 15 * len(examples)
    assert after < before - 0.05


def test_twin_reports_values_beyond_their_calibrated_refresh_bounds():
    """The twin measures |value| / calibrated bound over a run: within the bounds at the initial
    adapter, above 1 once the parameters grow (negative control: the same run with scaled-up LoRA B)."""
    model, report, params, examples = calibrated()
    twin = Twin(model, report.fns)
    for ex in examples:
        twin.gradients(ex, params)
    assert 0 < twin.bound_ratio <= 1.0  # the calibration examples themselves: inside (x16 or the ceiling)
    grown = {k: (v * 1e3 if ".B" in k else v) for k, v in params.items()}
    big = Twin(model, report.fns)
    big.gradients(examples[0], grown)
    assert big.bound_ratio > 10


def test_twin_counts_each_range_flag_once():
    model, report, params, examples = calibrated()
    fns = report.fns.copy()
    site = "pool.tanh"
    f = report.fns[site]
    fns[site] = build(site, f.lo / 100, f.hi / 100, arg_scale=f.arg_scale)  # far too narrow: flags
    fwd, both = Twin(model, fns), Twin(model, fns)
    fwd.logits(examples[0], params)
    both.gradients(examples[0], params)
    assert len(fwd.flags) == 1 and len(both.flags) == 1  # the backward reads no approximation of tanh


def test_a_length_that_packs_beyond_the_position_table_is_refused_in_one_line():
    # every packed row takes a position embedding: the tiny BERT has 64, so 130 tokens (two
    # ciphertexts of 128 rows) must be refused with the largest length that fits, not a broadcast error
    from p3eft.errors import P3eftError
    from p3eft.privtuner.config import PrivTunerConfig
    from p3eft.privtuner.twin import PrivTunerModel

    with pytest.raises(P3eftError, match=r"130 packs to 256 rows.*64 position embeddings.*fits is 64"):
        PrivTunerModel(PrivTunerConfig(model="tiny", layers=1, max_len=130, lora_rank=2))
    assert PrivTunerModel(PrivTunerConfig(model="tiny", layers=1, max_len=64, lora_rank=2)).spec.seq == 64
