"""Encrypted inference on the first N SST-2 dev sentences with the SST-2 run's trained adapter (its
decrypted float32 PEFT folder, docs/results/privtuner/enc_sst2_8tok/adapter) encrypted afresh on today's
chain, against the twin on the same parameters and against that run's own phase 3 (ours, 2026-12-01).

Usage (from the repository root, ~100 s per sentence on one core): ``python
benchmarks/privtuner_trained_adapter_error.py N``. Prints one line per sentence; the output of N=6 is
kept in docs/results/privtuner/trained_adapter_error_minilm_l6.log (the code of 9a3c91c) and
trained_adapter_error_minilm_l6_after_fixes.log (after the three fixes of the next session). It writes
no JSON.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from p3eft.data import load_task
from p3eft.privtuner.export import exported_arrays
from p3eft.privtuner.roles import DataOwnerConfig
from p3eft.privtuner.twin import Twin
from p3eft.privtuner.wiring import BertBackend, BertCodec, settings
from p3eft.privtuner.workflows import data_owner

n = int(sys.argv[1])
cfg = settings(
    model="minilm-l6",
    layers=2,
    max_len=8,
    rank=8,
    alpha=8.0,
    lr=0.003,
    param_set=None,
    seed=0,
    head_standardize=True,
)
print(cfg.params, flush=True)
backend = BertBackend(cfg, None)
same = backend.params_from_export(exported_arrays("docs/results/privtuner/enc_sst2_8tok/adapter"))
backend.init_params = same
twin = Twin(backend.model, backend.fns)
dev = load_task("sst2", "eval").examples[:n]
old = json.loads(Path("docs/results/privtuner/enc_sst2_8tok/privtuner_sst2.json").read_text())[
    "encrypted_eval"
]
with data_owner(BertCodec, DataOwnerConfig(lr=cfg.lr), backend, audit=False) as (do, aud):
    for i, e in enumerate(dev):
        t0 = time.time()
        z = np.array(do.logits(e.text))
        zt = twin.logits(backend.tokens.example(e.text, e.label), same)
        zo, so = np.array(old["logits"][i]), np.array(old["twin_same_params_logits"][i])
        print(
            i,
            "new enc-twin",
            np.round(z - zt, 7),
            "| old run enc-twin",
            np.round(zo - so, 5),
            "| twin now vs old run's same-params twin",
            float(np.abs(zt - so).max()),
            f"{time.time() - t0:.0f}s",
            flush=True,
        )
