"""PrivTuner's refresh mask width: one encrypted step at lambda 30 (the default) and at lambda 40.

Usage: ``python benchmarks/privtuner_refresh_lambda.py [--lambdas 30,40] [--model tiny] [--json FILE]``.
Runs ``p3eft privtuner verify``'s workflow (one encrypted forward pass and SGD step on two SST-2
examples, both parties in this process, against the twin) once per lambda, back to back, and prints
the refresh round trips, the bytes each way, the process CPU time (both parties together) and the
errors against the twin. Why: a wider mask hides more (N 2^-lambda per refresh) but needs more bits at
the refresh level: at PT16384, lambda 40 needs level 2 where lambda 30 fits level 1, so requests carry
one prime more and fewer levels remain between refreshes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from p3eft.fhe.costs import machine_info
from p3eft.privtuner.wiring import settings
from p3eft.privtuner.workflows import verify

FIGURES = ("refresh_round_trips", "bytes_up", "bytes_down", "logit_max_abs_diff", "step_max_abs_diff")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lambdas", default="30,40", help="comma-separated mask widths (bits)")
    ap.add_argument("--model", default="tiny", help="tiny (hidden 32), bert-tiny or minilm-l6")
    ap.add_argument("--max-len", type=int, default=8)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    base = settings(model=args.model, layers=2, max_len=args.max_len, rank=2, alpha=4.0)
    rows = {}
    for lam in (int(x) for x in args.lambdas.split(",")):
        cfg = dataclasses.replace(base, refresh_lambda=lam)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = verify(cfg, data_dir=args.data_dir, progress=False)
        rows[lam] = {
            "process_cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0,
            "model_owner_saw_plaintext": res["model_owner_saw_plaintext"],
            **{k: res[k] for k in FIGURES},
        }

    print(
        f"\n{args.model}, 2 layers, {args.max_len} tokens, {base.param_set}: one encrypted step on 2 examples"
    )
    print("| lambda | round trips | MB up | MB down | CPU s (both parties) | logit diff | step diff |")
    print("|---|---|---|---|---|---|---|")
    for lam, r in rows.items():
        print(
            f"| {lam} | {r['refresh_round_trips']} | {r['bytes_up'] / 1e6:.1f} | {r['bytes_down'] / 1e6:.1f} "
            f"| {r['process_cpu_s']:.1f} | {r['logit_max_abs_diff']:.1e} | {r['step_max_abs_diff']:.1e} |"
        )
    if args.json:
        out = {
            "command": "python benchmarks/privtuner_refresh_lambda.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"
            ),
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "machine": machine_info(),
            "param_set": base.param_set,
            "by_lambda": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
