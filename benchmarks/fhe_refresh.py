"""The client-aided refresh, stage by stage: CPU time and bytes of one round trip per parameter set.

Usage: ``python benchmarks/fhe_refresh.py [--sets N8192,N16384] [--lam 40] [--bound 4]
[--repeats 20] [--json FILE]``. For each set: a ciphertext one level below the top (one plaintext
product after a fresh encryption), then ``--repeats`` round trips through the bytes the two parties
exchange: the model owner's mask (drop to the refresh level, add the integer mask), the data owner's
answer (decrypt, lift, seeded re-encryption), the model owner's load and unmask. Prints the median
CPU time of each stage, the request and answer sizes and the largest slot error after the round
trip; ``--json`` writes the same with the run's provenance. Run it on two commits to compare them
like for like (same sets, same repeats, same machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.fhe import ops, refresh
from p3eft.fhe.context import Layout, keygen
from p3eft.fhe.costs import provenance
from p3eft.fhe.params import get_param_set


def _cpu_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def measure(name: str, lam: int, bound: float, repeats: int) -> dict[str, Any]:
    """One parameter set's stage times (median CPU ms), byte sizes and round-trip error."""
    ctx, sk = keygen(get_param_set(name), galois_steps=[])
    x = np.random.default_rng(0).uniform(-bound, bound, ctx.slots)
    ct = ops.mul_plain(ctx, ctx.encrypt_slots(x, Layout(ctx.slots)), 1.0)
    stages: dict[str, list[float]] = {"mask": [], "respond": [], "unmask": []}
    request = answer = b""
    out = ct
    for _ in range(repeats):
        masker = refresh.RefreshMasker(ctx, bound, lam)
        t0 = time.process_time()
        request = ctx.ciphertext_to_bytes(masker.mask(ct))
        t1 = time.process_time()
        answer = refresh.refresh_respond_bytes(ctx, sk, request)
        t2 = time.process_time()
        out = masker.unmask(ctx.ciphertext_from_bytes(answer))
        t3 = time.process_time()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            stages[key].append(dt)
    err = float(np.max(np.abs(sk.decrypt_slots(ctx, out)[: ctx.slots] - x)))
    return {
        "set": name,
        "input_level": ctx.level(ct),
        "top_level": ctx.top_level,
        "refresh_level": refresh.min_refresh_level(ctx, bound, lam),
        **{f"{k}_cpu_ms": _cpu_ms(v) for k, v in stages.items()},
        "request_bytes": len(request),
        "answer_bytes": len(answer),
        "max_abs_error": err,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="N8192,N16384")
    ap.add_argument("--lam", type=int, default=refresh.DEFAULT_LAMBDA)
    ap.add_argument("--bound", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    rows = [measure(s.strip(), a.lam, a.bound, a.repeats) for s in a.sets.split(",") if s.strip()]
    print(
        "| set | levels (input / refresh / top) | mask | respond | load + unmask | request | answer | max error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['set']} | {r['input_level']} / {r['refresh_level']} / {r['top_level']} "
            f"| {r['mask_cpu_ms']:.1f} ms | {r['respond_cpu_ms']:.1f} ms | {r['unmask_cpu_ms']:.1f} ms "
            f"| {r['request_bytes'] / 1e6:.3f} MB | {r['answer_bytes'] / 1e6:.3f} MB | {r['max_abs_error']:.1e} |"
        )
    if a.json:
        command = "python benchmarks/fhe_refresh.py " + " ".join(sys.argv[1:] if argv is None else argv)
        record = {
            "provenance": provenance(command, a.repeats),
            "lambda": a.lam,
            "bound": a.bound,
            "rows": rows,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
