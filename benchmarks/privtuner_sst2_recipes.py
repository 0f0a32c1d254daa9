"""Training recipes for the PrivTuner SST-2 experiment, tried on plaintext LoRA (float32, cheap).

Why: with minilm-l6 cut to 2 layers and the classification head on the first token (frozen pooler +
linear), plain SGD leaves every prediction on one class (docs/results/privtuner/README.md). This sweep
shows it over learning rates, LoRA alphas and batch sizes, and compares Adam. Recipes are judged on a
held-out slice of SST-2's *training* file (examples -516..-17: never trained on, and not the 16
calibration sentences at its very end), never on the dev set that the experiment reports.

    python benchmarks/privtuner_sst2_recipes.py [--train 512] [--json FILE]
        [--grid sgd:8:0.05:8,adam:8:0.01:8,...]    # optimizer:alpha:lr:batch

Each grid point: the experiment's initial adapter (seed 0), one epoch over the first ``--train``
examples in the experiment's seeded order (p3eft.privtuner.experiment.schedule), held-out accuracy
and the share of positive predictions (a classifier stuck on one class has 0 or 1).

A fifth field ``std`` (``sgd:8:0.003:8:std``) trains the classifier in standardized coordinates, as
the protocol does by default (ours, p3eft.privtuner.standardize): its input becomes (pooled - mean) *
inv_std and its weights are reparametrized so that the initial function is unchanged. The constants
are plaintext LoRA's own, as in the experiment (p3eft.privtuner.experiment.exact_standardizer): the
exact model's pooled features on the model owner's 16 calibration sentences (the training file's last
16, outside the held-out slice). Why: the pooled [CLS] features of minilm-l6 cut to 2 layers vary by
only ~2e-4 across sentences, so a plain SGD step moves the classifier's bias far more than its weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from p3eft.data import load_task
from p3eft.privtuner.experiment import exact_standardizer, plain_lora, schedule
from p3eft.privtuner.twin import PrivTunerModel
from p3eft.privtuner.wiring import settings, tokens_for

# SGD: alpha/r scales the LoRA branch, so lr * (alpha/r)^2 is the LoRA's effective step; the grid
# spans it from 1e-1 to 1e5 (ours); Adam at three learning rates.
DEFAULT_GRID = (
    "sgd:8:0.05:1,sgd:8:0.5:8,sgd:2048:0.0153:1,sgd:2048:0.153:8,sgd:131072:3.73e-5:1,sgd:131072:3.73e-4:8,"
    "adam:8:0.005:8,adam:8:0.01:8,adam:8:0.02:8,"
    "sgd:8:0.01:8:std,sgd:8:0.003:8:std,sgd:8:0.001:8:std,sgd:8:0.003:1:std,sgd:8:0.001:1:std,sgd:8:0.0003:1:std"
)


class _Backend:  # what plain_lora reads from the model owner's backend
    def __init__(self, model: PrivTunerModel) -> None:
        self.model = model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--grid", default=DEFAULT_GRID)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    base_cfg = settings(model="minilm-l6", layers=2, max_len=64)
    model = PrivTunerModel(base_cfg)
    tokens = tokens_for(model)
    examples = load_task("sst2", "train").examples
    train = [tokens.example(e.text, e.label) for e in examples[: args.train]]
    held = [tokens.example(e.text, e.label) for e in examples[-516:-16]]
    labels = np.array([e.label for e in held])
    init = model.init_params(seed=0)
    hs = exact_standardizer(model, tokens)
    init_std = model.reparametrize_head(init, None, hs)
    rows = []
    print(f"plaintext LoRA, minilm-l6 2 layers, {len(train)} training examples, {len(held)} held-out")
    head = (
        f"{'optimizer':<9} {'alpha':>8} {'lr':>9} {'batch':>5} {'held-out acc':>12} {'positive':>8} {'s':>5}"
    )
    print(head)
    print("-" * len(head))
    for point in [p for p in args.grid.split(",") if p]:
        opt, alpha, lr, batch, *extra = point.split(":")
        std = extra == ["std"]
        cfg = settings(model="minilm-l6", layers=2, max_len=64, alpha=float(alpha), lr=float(lr))
        steps = schedule(len(train), 1, int(batch), cfg.seed)
        t0 = time.perf_counter()
        losses, preds = plain_lora(
            cfg,
            _Backend(model),
            init_std if std else init,
            train,
            held,
            steps,
            opt,
            float32=True,
            head_std=hs if std else None,
        )
        row = {
            "optimizer": opt,
            "standardized_head_input": std,
            **(hs.describe() if std else {}),
            "alpha": float(alpha),
            "lr": float(lr),
            "batch": int(batch),
            "held_out_accuracy": float(np.mean(preds == labels)),
            "predicted_positive": float(np.mean(preds)),
            "last_100_mean_loss": float(np.mean(losses[-100:])),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"{opt + (' std' if std else ''):<9} {row['alpha']:>8g} {row['lr']:>9.3g} {row['batch']:>5} "
            f"{row['held_out_accuracy']:>12.4f} {row['predicted_positive']:>8.3f} {row['seconds']:>5.0f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        env = {"load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count()}
        res = {
            "train_examples": len(train),
            "held_out": "SST-2 training file examples -516..-17",
            "held_out_positive_share": float(np.mean(labels)),
            "environment": env,
            "rows": rows,
        }
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
