"""What span filling (``mix:4+fill``, the default) costs against ``mix:4`` and no defence, by call size.

Span filling sends at least ``width + 16`` random rows in every call, so the price depends on how many
real rows a call carries. Two sections:

  1. arithmetic per token from each model's actual split (meta device) for calls of 1 to 8192 rows:
     how much more the accelerator computes (random rows), and the enclave's arithmetic against the
     accelerator's *useful* work (the issue's 10% goal for GPT2-XL);
  2. measured on this CPU with the real SmolLM2-135M weights: one inference call (logits) of a single
     64-token prompt and of a batch of 8 such prompts, per defence. The same prompts, the same repeats
     (one warm-up, then ``--repeats`` timed) for every defence; wall and process CPU time (the enclave
     and the untrusted side share this process), and max |logit diff| against the plain model. The
     prompts are SciQ paragraphs (``P3EFT_DATA`` or the bundled data folder).

Run:  .venv/bin/python benchmarks/obfuscatune_fill.py --json docs/results/obfuscatune/fill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

DEFENCES = ["none", "mix:4", "mix:4+fill"]
ROWS = [1, 16, 64, 128, 512, 2048, 8192]


def arithmetic_section(models: list[str], context: int) -> list[dict]:
    from p3eft.models import get_spec
    from p3eft.obfuscatune.accounting import model_accounting

    out = []
    for name in models:
        cfg = get_spec(name).hf_config()
        for defence in DEFENCES:
            for rows in ROWS:
                a = model_accounting(cfg, masks="kron", context=context, defence=defence, rows_per_call=rows)[
                    "arithmetic"
                ]
                out.append(
                    {
                        "model": name,
                        "defence": defence,
                        "rows_per_call": rows,
                        "accelerator_factor": 1.0 + a["accelerator_noise_overhead"],
                        "enclave_vs_useful_accelerator": a["enclave_vs_useful_accelerator"],
                        "mixing_vs_useful_accelerator": a["mixing_vs_accelerator"]
                        * (1.0 + a["accelerator_noise_overhead"]),
                    }
                )
    return out


def _prompts(tokenizer, n: int, length: int) -> dict[str, torch.Tensor]:
    """The first ``n`` SciQ support paragraphs of at least ``length`` tokens, cut to ``length``: real
    text (random token ids make far larger activations, and so larger float error, than text does),
    every prompt exactly ``length`` tokens, the same prompts for every defence."""
    from p3eft.data import load_task

    rows = []
    for ex in load_task("sciq", "eval", limit=20 * n).examples:
        ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == n:
            break
    if len(rows) < n:
        raise SystemExit(f"fewer than {n} SciQ paragraphs of {length} tokens")
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def timing_section(model_name: str, length: int, batches: list[int], repeats: int) -> list[dict]:
    from p3eft.models import load_causal_lm
    from p3eft.obfuscatune.enclave import EnclaveSettings
    from p3eft.obfuscatune.session import session_from_model

    loaded = load_causal_lm(model_name, dtype=torch.float32, allow_random=False)
    out = []
    for b in batches:
        data = _prompts(loaded.tokenizer, b, length)
        with torch.no_grad():
            ref = loaded.model(**data).logits
        for defence in DEFENCES:
            s = session_from_model(
                loaded.model, EnclaveSettings(masks="kron", defence=defence), name=model_name
            )
            logits = s.enclave_channel.call("logits", **data)  # warm-up
            walls, cpus = [], []
            for _ in range(repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                s.enclave_channel.call("logits", **data)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            out.append(
                {
                    "model": model_name,
                    "prompts": b,
                    "tokens_per_prompt": length,
                    "defence": defence,
                    "repeats": repeats,
                    "wall_s_median": statistics.median(walls),
                    "cpu_s_median": statistics.median(cpus),
                    "max_abs_logit_diff": float((logits - ref).abs().max()),
                }
            )
            del s
    for r in out:
        base = next(x for x in out if x["prompts"] == r["prompts"] and x["defence"] == "none")
        r["wall_vs_none"] = r["wall_s_median"] / base["wall_s_median"]
        r["cpu_vs_none"] = r["cpu_s_median"] / base["cpu_s_median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--models", default="gpt2-xl,smollm2-135m", help="architectures for section 1")
    ap.add_argument("--context", type=int, default=128, help="context length for the attention arithmetic")
    ap.add_argument("--model", default="smollm2-135m", help="real weights for section 2")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()

    arith = arithmetic_section(args.models.split(","), args.context)
    print(
        "| model | defence | rows per call | accelerator work (x) | enclave / useful accelerator | mixing / useful |"
    )
    print("|---|---|---|---|---|---|")
    for r in arith:
        print(
            f"| {r['model']} | {r['defence']} | {r['rows_per_call']} | {r['accelerator_factor']:.2f}"
            f" | {100 * r['enclave_vs_useful_accelerator']:.1f}% | {100 * r['mixing_vs_useful_accelerator']:.1f}% |"
        )
    timing: list[dict] = []
    if not args.skip_timing:
        timing = timing_section(
            args.model, args.length, [int(b) for b in args.batches.split(",")], args.repeats
        )
        print()
        print(
            "| model | prompts x tokens | defence | wall s (median) | CPU s (median) | wall / none | CPU / none"
            " | max abs logit diff |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in timing:
            print(
                f"| {r['model']} | {r['prompts']} x {r['tokens_per_prompt']} | {r['defence']}"
                f" | {r['wall_s_median']:.3f} | {r['cpu_s_median']:.3f} | {r['wall_vs_none']:.2f}"
                f" | {r['cpu_vs_none']:.2f} | {r['max_abs_logit_diff']:.1e} |"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "arithmetic": arith,
                    "timing": timing,
                    "torch_threads": torch.get_num_threads(),
                    "note": "timing: one process, the enclave and the untrusted side on the same CPU",
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
