"""The experiment's plaintext LoRA (torch + peft, through the export path's adapter loading) trains
exactly like the exact twin: same initial adapter and head, same per-example SGD, same losses."""

from __future__ import annotations

import numpy as np

from p3eft.privtuner.experiment import plain_lora
from p3eft.privtuner.twin import Example, PrivTunerModel, Twin
from p3eft.privtuner.wiring import Tokens, settings


class _Backend:  # what plain_lora reads from the model owner's backend
    def __init__(self, model: PrivTunerModel) -> None:
        self.model = model


def test_plain_lora_in_torch_equals_the_exact_twin():
    cfg = settings(model="tiny", layers=2, max_len=8, rank=2, alpha=4.0, lr=0.5)
    model = PrivTunerModel(cfg)
    tokens = Tokens("tiny", int(model.weights.word.shape[0]), 0, model.spec.seq, cfg.max_len)
    texts = [("a good movie", 1), ("dull and long", 0), ("great fun", 1), ("awful", 0)]
    train = [tokens.example(t, y) for t, y in texts]
    init = model.init_params(seed=0, b_scale=0.1)  # non-zero B: the LoRA branch matters from step 1
    losses, preds = plain_lora(cfg, _Backend(model), init, train, train)
    twin = Twin(model, exact=True)
    params, twin_losses = twin.train(train, init, cfg.lr)
    assert np.allclose(losses, twin_losses, atol=1e-9)
    assert losses[0] != losses[-1]
    assert list(preds) == list(twin.predict(train, params))
    assert isinstance(train[0], Example)
