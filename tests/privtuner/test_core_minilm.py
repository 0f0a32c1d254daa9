"""Real weights: minilm-l6 cut to one layer, one SST-2 training sentence, encrypted vs the twin.

MiniLM's [CLS] row has a LayerNorm variance ~300x the other rows' (layer 0, second LayerNorm): this
runs only because the variance is scaled per position (calibration) and the encrypted path resets the
ciphertexts' scale drift at refreshes (backend)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from p3eft.data.paths import resolve_data_dir
from p3eft.privtuner.calibration import calibrate
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.local import examples_from_sentences, verify_local
from p3eft.privtuner.model import from_hf, load_hf_model
from p3eft.privtuner.twin import PrivTunerModel, Twin


@pytest.mark.slow
def test_minilm_one_layer_encrypted_step_matches_twin():
    hf, tok, random, source = load_hf_model("minilm-l6")
    if random:
        pytest.skip("minilm-l6 real weights are not installed")
    # refresh ceiling 2^20: the [CLS] row's squared deviations reach ~5e4 in MiniLM (calibration says so)
    # rank 2, one training sentence, 8 calibration sentences: the smallest real-weights run (minutes:
    # key generation and the 384-wide plaintext-weight kernels dominate)
    cfg = PrivTunerConfig(model="minilm-l6", layers=1, max_len=4, lora_rank=2, refresh_bound=2.0**20, lr=0.05)
    model = PrivTunerModel(cfg, from_hf(hf, 1, "minilm-l6", random, source))
    with (resolve_data_dir() / "sst2" / "train.tsv").open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    calib = examples_from_sentences(
        tok, model.spec, [r[0] for r in rows[-8:]], [int(r[1]) for r in rows[-8:]]
    )
    train = examples_from_sentences(tok, model.spec, [r[0] for r in rows[:1]], [int(r[1]) for r in rows[:1]])
    report = calibrate(model, calib, model.init_params())
    assert report.bound_ok
    # B != 0: with B = 0 the first LoRA update is as small as CKKS's noise floor (docs/privtuner.md),
    # and a non-zero B makes the LoRA gradients large enough to check their values
    params = model.init_params(b_scale=0.1, head_std=report.fns.head_std)
    exact = Twin(model, report.fns, exact=True)
    twin = Twin(model, report.fns)
    assert max(np.max(np.abs(twin.logits(e, params) - exact.logits(e, params))) for e in train) < 1e-2
    result = verify_local(model, report.fns, params, train, cfg.lr)
    assert result["logit_max_abs_diff"] < 1e-2
    assert not result["range_flags"]
    # the random classifier head gives logits of ~1e-2, so the absolute bound above is loose: also
    # within 1% of the twin's own magnitudes (measured ~5e-4 of them on the logits)
    _, logits, grads = twin.gradients(train[0], params)
    assert result["logit_max_abs_diff"] < 1e-2 * float(np.max(np.abs(logits)))
    by_param = result["step_abs_diff_by_param"]

    def worst(head: bool) -> tuple[float, float]:
        keys = [k for k in grads if k.startswith("head.") == head]
        return max(by_param[k] for k in keys), max(float(np.max(np.abs(cfg.lr * grads[k]))) for k in keys)

    # relative to the step itself (docs/privtuner.md, "The first encrypted step is noisy"): with B = 0
    # the LoRA error was 30-100% of its tiny first update across key draws; here B != 0. The head's
    # standardization multiplies the pooled features' CKKS noise by inv_std (~1e4): measured 12% of the
    # head's update until the fixes of 2026-12-01 (docs/privtuner.md, "Levels and refreshes"), 2e-5
    # since (8.2e-6 of 0.42; LoRA 1.4%, 5.7e-6 of 4.2e-4)
    (lora_err, lora_update), (head_err, head_update) = worst(False), worst(True)
    print(f"lora {lora_err:.3g} of {lora_update:.3g}; head {head_err:.3g} of {head_update:.3g}")
    assert lora_err < 0.1 * lora_update  # measured 3.5% (1.47e-5 of 4.2e-4); the noise varies with the keys
    assert head_err < 1e-3 * head_update
