"""A tiny BERT, random examples and a cached calibration: for tests, demos and quick checks (ours).

Not a data path: the examples are random token ids, the model has random weights."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from p3eft.privtuner.calibration import calibrate
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.model import from_hf, tiny_hf_model
from p3eft.privtuner.twin import Example, PrivTunerModel


def tiny_model(layers: int = 1, adapt_from: int = 0, hidden: int = 16, max_len: int = 4) -> PrivTunerModel:
    cfg = PrivTunerConfig(model="tiny", layers=layers, max_len=max_len, lora_rank=2, adapt_from=adapt_from)
    hf = tiny_hf_model(hidden=hidden, intermediate=2 * hidden, layers=layers)
    return PrivTunerModel(cfg, from_hf(hf, layers, "tiny", True, "test"))


def random_examples(model: PrivTunerModel, n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, model.spec.max_len + 1))
        ids = np.zeros(model.spec.seq, dtype=np.int64)
        ids[:length] = rng.integers(1, 120, length)
        out.append(Example(ids, length, int(rng.integers(0, 2))))
    return out


@lru_cache(maxsize=4)
def calibrated(layers: int = 1, adapt_from: int = 0, hidden: int = 16, max_len: int = 4):
    """(model, report, params, examples): B non-zero so that every gradient path carries signal;
    ``params`` laid out for the report's head standardization (``report.fns.head_std``)."""
    model = tiny_model(layers, adapt_from, hidden, max_len)
    params = model.init_params(b_scale=0.3)
    examples = random_examples(model, 6)
    report = calibrate(model, examples, params)
    return model, report, model.reparametrize_head(params, None, report.fns.head_std), examples
