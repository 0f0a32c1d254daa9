"""How much of the enclave's LM head fine-tuning and scoring need, per dataset, and what that does to
the enclave's share of the arithmetic for GPT2-XL.

The enclave applies the LM head only where logits are used: in training at positions that carry a
label (:func:`p3eft.obfuscatune.enclave.labelled_positions_loss`: the answer tokens, never the
question or the padding), in multiple-choice scoring at the continuation's positions
(``continuation_logits``). This script measures both shares on Table 1's batches, with GPT-2's own
tokenizer: training, each dataset's first ``--limit`` training examples cut to ``--max-len`` tokens,
batches of ``--batch-size`` in the training order of seed ``--seed``, one pass; scoring, the first
``--eval-limit`` evaluation questions, batched by the scorer itself (every choice a row, longest first).
Batches are right-padded and every batch position crosses the boundary, so padding counts as a
position. It then prices GPT2-XL's enclave against the accelerator's useful work (the issue's 10%
goal) with the head at that share of positions, at calls of ``batch-size x max-len`` rows, beside the
full-logits figure (head at every position).

Run:  .venv/bin/python benchmarks/obfuscatune_head.py --json docs/results/obfuscatune/head.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DATASETS = ["webqs", "obqa", "piqa", "sciq"]


def labelled_share(dataset: str, tokenizer, limit: int, max_len: int, batch_size: int, seed: int, data_dir):
    from p3eft.data import load_task
    from p3eft.tuning.lm_data import IGNORE_INDEX, StepBatches, build_lm_training_examples, collate_lm

    task = load_task(dataset, "train", data_dir=data_dir, limit=limit, seed=seed)
    items = build_lm_training_examples(tokenizer, task.examples, max_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = StepBatches(items, batch_size, seed, lambda b: collate_lm(b, pad))
    positions = real = labelled = 0
    for step in range(math.ceil(len(items) / batch_size)):
        b = batches(step)
        positions += b["input_ids"].numel()
        real += int(b["attention_mask"].sum())
        labelled += int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
    return {
        "examples": len(items),
        "positions": positions,
        "real_tokens": real,
        "labelled_positions": labelled,
        "head_share": labelled / positions,
    }


def scored_share(dataset: str, tokenizer, limit: int, batch_size: int, seed: int, data_dir):
    """The share of scoring-batch positions whose logits the multiple-choice scorer asks for."""
    import torch

    from p3eft.data import load_task
    from p3eft.tuning.scoring import score_multiple_choice

    task = load_task(dataset, "eval", data_dir=data_dir, limit=limit, seed=seed)
    counts = {"positions": 0, "scored": 0}

    def record(ids, mask, positions):
        counts["positions"] += positions.numel()
        counts["scored"] += int(positions.sum())
        return torch.zeros(int(positions.sum()), len(tokenizer))  # any logits: only the mask is measured

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    score_multiple_choice(
        None,
        tokenizer,
        task.examples,
        batch_size=batch_size,
        progress=False,
        pad_token_id=pad,
        selected_logits_fn=record,
    )
    return {"questions": len(task.examples), **counts, "head_share": counts["scored"] / counts["positions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--eval-limit", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from p3eft.models import get_spec
    from p3eft.models.loading import load_tokenizer
    from p3eft.obfuscatune.accounting import model_accounting

    tokenizer = load_tokenizer("gpt2-xl")
    config = get_spec("gpt2-xl").hf_config()
    rows = args.batch_size * args.max_len

    def enclave_vs_useful(share: float) -> float:
        acc = model_accounting(
            config, mode="strict", masks="kron", defence="mix:4+fill", rows_per_call=rows, head_share=share
        )
        return acc["arithmetic"]["enclave_vs_useful_accelerator"]

    full = enclave_vs_useful(1.0)
    out = {
        "settings": vars(args) | {"json": str(args.json), "rows_per_call": rows},
        "full_logits": full,
        "rows": [],
        "scoring": [],
    }
    print(f"GPT2-XL, strict, kron, mix:4+fill, {rows}-row calls; enclave vs the accelerator's useful work")
    print(f"training ({args.limit} examples):")
    print(f"{'dataset':<8} {'positions':>9} {'real':>6} {'labelled':>8} {'head share':>10} {'enclave':>8}")
    print(f"{'(full logits)':<35} {1.0:>10.3f} {full:>8.1%}")
    for ds in args.datasets.split(","):
        row = {
            "dataset": ds,
            **labelled_share(
                ds, tokenizer, args.limit, args.max_len, args.batch_size, args.seed, args.data_dir
            ),
        }
        row["enclave_vs_useful_accelerator"] = enclave_vs_useful(row["head_share"])
        out["rows"].append(row)
        print(
            f"{ds:<8} {row['positions']:>9} {row['real_tokens']:>6} {row['labelled_positions']:>8} "
            f"{row['head_share']:>10.3f} {row['enclave_vs_useful_accelerator']:>8.1%}"
        )
    print(f"\nscoring (multiple choice, {args.eval_limit} questions):")
    print(f"{'dataset':<8} {'positions':>9} {'scored':>8} {'head share':>10} {'enclave':>8}")
    for ds in args.datasets.split(","):
        row = {
            "dataset": ds,
            **scored_share(ds, tokenizer, args.eval_limit, args.batch_size, args.seed, args.data_dir),
        }
        row["enclave_vs_useful_accelerator"] = enclave_vs_useful(row["head_share"])
        out["scoring"].append(row)
        print(
            f"{ds:<8} {row['positions']:>9} {row['scored']:>8} {row['head_share']:>10.3f} "
            f"{row['enclave_vs_useful_accelerator']:>8.1%}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
