"""The classifier's standardized input (ours): a reparametrization that keeps the function, trains the
same in torch + peft as in the twin, folds back into a plain PEFT head, and makes SGD learn where the
plain head barely moves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from p3eft.errors import ProtocolError
from p3eft.privtuner.calibration import pooled_features
from p3eft.privtuner.experiment import plain_lora, schedule, twin_run
from p3eft.privtuner.standardize import HeadStandardizer
from p3eft.privtuner.toy import calibrated
from p3eft.privtuner.twin import PrivTunerModel, Twin
from p3eft.privtuner.wiring import BertBackend, Tokens, settings

TEXTS = [("a good movie", 1), ("dull and long", 0), ("great fun", 1), ("awful", 0), ("fine", 1)]


def test_reparametrization_round_trips_and_keeps_the_logits():
    rng = np.random.default_rng(0)
    hs = HeadStandardizer.from_features(0.06 + 2e-4 * rng.standard_normal((16, 8)))
    w, b = rng.standard_normal((2, 8)), rng.standard_normal(2)
    ws, bs = hs.to_standardized(w, b)
    w2, b2 = hs.to_plain(ws, bs)
    assert np.allclose(w2, w, atol=1e-12) and np.allclose(b2, b, atol=1e-9)
    x = 0.06 + 2e-4 * rng.standard_normal(8)
    assert np.allclose(w @ x + b, ws @ ((x - hs.mean) * hs.inv_std) + bs, atol=1e-9)
    assert np.max(np.abs(ws)) < 1e-2 * np.max(np.abs(w))  # a spread of 2e-4 shrinks the weights


def test_calibration_standardizes_the_twins_own_features():
    model, report, params, examples = calibrated()
    hs = report.fns.head_std
    assert hs is not None and hs.hidden == model.weights.hidden
    feats = pooled_features(Twin(model, report.fns), examples, params)
    z = (feats - hs.mean) * hs.inv_std
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-9) and np.allclose(z.std(axis=0), 1.0, atol=1e-6)


def test_standardized_and_plain_head_give_the_same_exact_logits():
    """Same weights, same initial adapter: with or without the standardization the exact model is
    the same function (only SGD's geometry changes)."""
    model, report, params, examples = calibrated()
    hs = report.fns.head_std
    plain = model.reparametrize_head(params, hs, None)
    with_std, without = Twin(model, report.fns, exact=True), Twin(model, exact=True)
    for ex in examples:
        assert np.max(np.abs(with_std.logits(ex, params) - without.logits(ex, plain))) < 1e-9
    # negative control: the standardized parameters read as plain ones are another function
    assert (
        max(np.max(np.abs(without.logits(ex, params) - without.logits(ex, plain))) for ex in examples) > 1e-3
    )


def _tiny(lr: float, head_standardize: bool = True):
    cfg = settings(
        model="tiny", layers=2, max_len=8, rank=2, alpha=4.0, lr=lr, head_standardize=head_standardize
    )
    backend = BertBackend(cfg)
    train = [backend.tokens.example(t, y) for t, y in TEXTS]
    return cfg, backend, train


def test_plain_lora_with_the_standardized_head_trains_like_the_exact_twin():
    cfg, backend, train = _tiny(0.02)
    hs = backend.fns.head_std
    assert hs is not None
    init = backend.initial_params(seed=0)
    steps = schedule(len(train), epochs=2, batch=2, seed=1)
    losses, preds = plain_lora(cfg, backend, init, train, train, steps, head_std=hs)
    twin_losses, twin_preds = twin_run(
        Twin(backend.model, backend.fns, exact=True), init, train, train, steps, cfg.lr
    )
    assert np.allclose(losses, twin_losses, atol=1e-9)
    assert list(preds) == list(twin_preds)
    # negative control: the same parameters trained in plain coordinates make other updates
    plain_init = backend.model.reparametrize_head(init, hs, None)
    other, _ = plain_lora(cfg, backend, plain_init, train, train, steps)
    assert losses[0] == pytest.approx(other[0], abs=1e-9)  # same function before the first update
    assert np.max(np.abs(np.subtract(other, losses))) > 1e-3


def test_sgd_learns_with_the_standardized_head_where_the_plain_head_barely_moves():
    """Why it exists: the pooled features spread by ~1e-4 of their mean, so SGD on the plain head moves
    the loss far less than SGD at the same rate in standardized coordinates."""
    drops = {}
    for std in (True, False):
        _, backend, train = _tiny(0.005, head_standardize=std)
        twin = Twin(backend.model, backend.fns, exact=True)
        init = backend.initial_params(seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trained, _ = twin.train(train, init, 0.005, epochs=5)
        before = np.mean([twin.gradients(ex, init)[0] for ex in train])
        after = np.mean([twin.gradients(ex, trained)[0] for ex in train])
        drops[std] = before - after
    assert drops[True] > 0.05 and drops[True] > 10 * abs(drops[False])


def test_the_data_owners_setup_carries_the_standardization_and_refuses_a_malformed_one():
    _, backend, _ = _tiny(0.02)
    spec = backend.open_session(0)
    setup = spec.public_setup()
    hidden = int(setup["hidden"])
    got = HeadStandardizer.from_dict(setup["head_std"], hidden)
    assert got is not None and np.array_equal(got.inv_std, backend.fns.head_std.inv_std)
    for bad in (
        {"mean": [0.0]},
        {"mean": [0.0] * hidden, "inv_std": [1.0] * (hidden - 1)},
        {"mean": [float("nan")] * hidden, "inv_std": [1.0] * hidden},
        {"mean": [0.0] * hidden, "inv_std": [0.0] * hidden},
        "junk",
    ):
        with pytest.raises(ProtocolError):
            HeadStandardizer.from_dict(bad, hidden)  # type: ignore[arg-type]
    assert HeadStandardizer.from_dict(None, hidden) is None
    from p3eft.privtuner.wiring import BertCodec

    assert BertCodec(setup).head_std is not None
    for broken in (
        setup | {"head_std": None},
        setup | {"config": setup["config"] | {"head_standardize": False}},
    ):
        with pytest.raises(ProtocolError, match="does not match"):
            BertCodec(broken)  # a data owner would export an unfolded (or wrongly folded) head
    with pytest.raises(ValueError):
        HeadStandardizer.from_features(np.zeros((1, 4)))


def test_tokens_and_model_agree_on_the_tiny_vocab():  # guards the fixture above
    model = PrivTunerModel(settings(model="tiny", layers=1, max_len=4))
    tokens = Tokens("tiny", int(model.weights.word.shape[0]), 0, model.spec.seq, 4)
    assert tokens.example("a good movie").ids.shape == (model.spec.seq,)


def test_a_trained_standardized_head_exports_to_a_plain_peft_model_with_the_same_logits():
    """After SGD in standardized coordinates, the data owner's fold-back gives a plain PEFT classifier
    (no hook) whose logits are the exact twin's."""
    import torch

    from p3eft.privtuner.adapter import peft_names
    from p3eft.privtuner.export import peft_model_with
    from p3eft.privtuner.wiring import export_base

    cfg, backend, train = _tiny(0.005)
    twin = Twin(backend.model, backend.fns, exact=True)
    trained, _ = twin.train(train, backend.initial_params(seed=0), cfg.lr, epochs=3)
    plain = peft_names(backend.plain_params(trained))
    model = peft_model_with(export_base(cfg).double(), plain, cfg.lora_rank, cfg.lora_alpha)
    moved = False
    for ex in train:
        ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
        want = twin.logits(ex, trained)
        assert np.max(np.abs(got - want)) < 1e-6
        moved |= bool(np.max(np.abs(want - twin.logits(ex, backend.initial_params(seed=0)))) > 1e-2)
    assert moved  # the head really trained
