"""Step time and tokens/s of plain LoRA fine-tuning (the unprotected reference both schemes are judged against).

Each model gets LoRA with the ObfuscaTune appendix defaults (rank 16, alpha 32, dropout 0.05, all
attention and MLP linears) and AdamW; batches are real PIQA text packed to exactly ``--seq-len``
tokens so every step does the same work. Warm-up steps are not timed.

    .venv/bin/python benchmarks/plain_lora.py [--models smollm2-135m,gpt2] [--batch-size 4]
        [--seq-len 128] [--steps 5] [--warmup 1] [--device auto] [--threads N] [--json FILE]

On a machine whose cores are shared with other busy processes, ``--threads 1`` is much faster than an
oversubscribed default (OpenMP threads then wait on each other); the table prints the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from p3eft.data import load_task
from p3eft.models import count_parameters, load_causal_lm
from p3eft.tuning import TrainConfig, attach_lora, trainable_parameters


def packed_batch(tokenizer, batch_size: int, seq_len: int) -> torch.Tensor:
    """``[batch_size, seq_len]`` token ids of real PIQA text laid end to end."""
    need = batch_size * seq_len
    ids: list[int] = []
    for ex in load_task("piqa", "train").examples:
        ids += tokenizer(ex.context + " " + ex.choices[ex.label] + "\n", add_special_tokens=False)[
            "input_ids"
        ]
        if len(ids) >= need:
            break
    return torch.tensor(ids[:need]).view(batch_size, seq_len)


def bench_model(name: str, batch_size: int, seq_len: int, steps: int, warmup: int, device: str) -> dict:
    loaded = load_causal_lm(name)
    params_total = count_parameters(loaded.model)
    cfg = TrainConfig(batch_size=batch_size, max_len=seq_len)
    model = attach_lora(loaded, cfg).to(device)
    model.train()
    trainable = trainable_parameters(model)
    opt = torch.optim.AdamW(trainable.values(), lr=cfg.lr)
    ids = packed_batch(loaded.tokenizer, batch_size, seq_len).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    times, losses = [], []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if i >= warmup:
            times.append(dt)
    step_s = statistics.mean(times)
    return {
        "model": name,
        "weights_random": loaded.weights_random,
        "parameters": params_total,
        "trainable_parameters": sum(p.numel() for p in trainable.values()),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps_timed": steps,
        "step_s_mean": step_s,
        "step_s_stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "tokens_per_s": batch_size * seq_len / step_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gpt2")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append(bench_model(name, args.batch_size, args.seq_len, args.steps, args.warmup, device))
    env = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    print(
        f"plain LoRA fine-tuning, {env['device']}, {env['torch_threads']} threads of {env['cpu_count']} cores "
        f"(1-min load {env['load_average_1min_at_end']:.1f}), rank 16, fp32"
    )
    head = f"{'model':<14} {'weights':<7} {'params':>13} {'trainable':>11} {'batch x seq':>11} {'step s':>14} {'tokens/s':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<14} {'random' if r['weights_random'] else 'real':<7} {r['parameters']:>13,} "
            f"{r['trainable_parameters']:>11,} {str(r['batch_size']) + ' x ' + str(r['seq_len']):>11} "
            f"{r['step_s_mean']:>7.3f} ± {r['step_s_stdev']:<5.3f} {r['tokens_per_s']:>9.1f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
