"""Seconds, bytes and refresh round trips of one encrypted PrivTuner training step and one encrypted
inference, per model shape, CKKS parameter set and model-owner worker count, through the real protocol.

Usage: ``python benchmarks/privtuner.py [--models bert-tiny,minilm-l6] [--layers 2] [--max-len 64]
[--param-sets PT16384,PT32768] [--workers 1,2] [--rotation-keys exact|pow2] [--repeats 1] [--json FILE]``. Prints one table per
model and writes ``{"models": {name: {"workers=N": <step-cost file>}}}`` (each step-cost file is the
format ``p3eft wireless run --costs`` reads), plus where the model owner's time goes (linear products,
ciphertext products, nonlinear functions, refreshes) from the encoder's own counters. ``bert-tiny`` has
random weights from its config (the cost shape); ``minilm-l6`` has its real weights.

Workers: with N > 1 the model owner's plaintext-weight products run on a pool of N processes
(:class:`p3eft.fhe.parallel.KernelPool`); everything else stays in the model owner's session thread.
Server CPU seconds include the workers' CPU, so the pool shows in wall time, not in CPU. The pool is
started once per session, with the keys; its start is in ``session_setup_*``, not in the step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p3eft.fhe.galois import ROTATION_KEY_MODES
from p3eft.privtuner.workflows import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert-tiny,minilm-l6")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--param-sets", default=None, help="comma-separated (default: every PrivTuner set)")
    ap.add_argument("--workers", default="1,2", help="comma-separated model-owner worker counts")
    ap.add_argument(
        "--rotation-keys",
        choices=list(ROTATION_KEY_MODES),
        default="exact",
        help="the data owner's Galois keys: one per step, or powers of two (fewer, smaller keys)",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    out: dict = {"command": " ".join(["python", *sys.argv]), "models": {}}
    for name in args.models.split(","):
        for workers in counts:
            res = bench(
                model=name,
                layers=args.layers,
                max_len=args.max_len,
                rank=args.rank,
                alpha=args.alpha,
                param_sets=args.param_sets.split(",") if args.param_sets else None,
                repeats=args.repeats,
                command=out["command"],
                workers=workers,
                rotation_keys=args.rotation_keys,
            )
            out["models"].setdefault(name, {})[f"workers={workers}"] = res["costs"]
            print(f"\n{name}, {args.layers} layers, {args.max_len} tokens, {workers} worker(s)")
            print(res["table"])
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
