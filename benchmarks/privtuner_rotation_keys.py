"""PrivTuner's Galois keys under the two policies (``exact``, ``pow2``): their number, size and memory,
and what a rotation costs with each.

Usage: ``python benchmarks/privtuner_rotation_keys.py [--model bert-tiny] [--max-len 64]
[--param-sets PT16384,PT32768] [--modes exact,pow2] [--skip PT32768:exact] [--json FILE]``.

Each (parameter set, policy) runs in a fresh child process, so that its peak resident memory is its
own (``ru_maxrss``): the data owner's key generation and serialisation (one key at a time, not kept:
``keygen(..., keep_galois_keys=False)``, as PrivTuner's data owner does), then the model owner's copy
loaded from the bytes (as a served model owner does: SEAL objects only). Then every rotation step the model makes is applied once to a
fresh top-level ciphertext, timed in CPU seconds, and checked against NumPy. The ``peak_rss_gb_*``
fields are GiB (2^30 bytes), each the process's peak so far: before the keys (model loaded), after the
data owner's key generation and serialisation, and after the model owner's copy. Why: at N = 32768 the exact
keys of a two-layer model are ~15-19 GB, more than a 23 GB machine holds next to the work.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def measure(model: str, max_len: int, param_set: str, mode: str) -> dict:
    """One (parameter set, policy): keys, memory and the cost of the model's rotations (this process)."""
    from p3eft.fhe import ops
    from p3eft.fhe.context import CkksContext, keygen
    from p3eft.privtuner.encrypted import required_galois_steps, rotation_steps
    from p3eft.privtuner.twin import PrivTunerModel
    from p3eft.privtuner.wiring import settings

    cfg = settings(model=model, layers=2, max_len=max_len, param_set=param_set, rotation_keys=mode)
    pm = PrivTunerModel(cfg)
    steps, key_steps = rotation_steps(pm), required_galois_steps(pm)
    rss0 = _rss_gb()
    cpu = time.process_time()
    ctx, sk = keygen(cfg.params, key_steps, keep_galois_keys=False)
    keygen_cpu = time.process_time() - cpu
    payload = ctx.to_payload()
    upload = sum(len(v) for v in payload.values())
    rss_keygen = _rss_gb()
    mo = CkksContext.from_payload(payload, keep_key_bytes=False)
    del payload
    rss_both = _rss_gb()
    x = np.random.default_rng(0).uniform(-1, 1, mo.slots)
    ct = mo.ciphertext_from_bytes(ctx.ciphertext_to_bytes(ctx.encrypt_slots(x, _layout(mo.slots))))
    per_step, err = [], 0.0
    for s in steps:
        cpu = time.process_time()
        out = ops.rotate(mo, ct, s)
        per_step.append(time.process_time() - cpu)
        err = max(err, float(np.max(np.abs(sk.decrypt_slots(mo, out) - np.roll(x, -s)))))
    return {
        "model": model,
        "max_len": max_len,
        "param_set": param_set,
        "primes": len(cfg.params.coeff_mod_bit_sizes),
        "mode": mode,
        "rotation_steps": len(steps),
        "galois_keys": len(key_steps),
        "key_upload_bytes": upload,
        "keygen_cpu_s": keygen_cpu,
        "peak_rss_gb_before_keys": rss0,
        "peak_rss_gb_after_keygen": rss_keygen,
        "peak_rss_gb_with_model_owner_copy": rss_both,
        "rotation_cpu_s_mean": float(np.mean(per_step)),
        "rotation_cpu_s_max": float(np.max(per_step)),
        "rotation_max_abs_err": err,
    }


def _layout(slots: int):
    from p3eft.fhe.context import Layout

    return Layout(slots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bert-tiny", help="bert-tiny (random weights) or minilm-l6")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--param-sets", default="PT16384,PT32768")
    ap.add_argument("--modes", default="exact,pow2")
    ap.add_argument(
        "--skip", default="", help="SET:MODE pairs not to run, e.g. PT32768:exact (comma-separated)"
    )
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--one", nargs=2, metavar=("PARAM_SET", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.max_len, *args.one)))
        return
    rows = []
    for ps in args.param_sets.split(","):
        for mode in args.modes.split(","):
            if f"{ps}:{mode}" in args.skip.split(","):
                continue
            cmd = [sys.executable, __file__, "--model", args.model, "--max-len", str(args.max_len)]
            done = subprocess.run([*cmd, "--one", ps, mode], capture_output=True, text=True)
            if done.returncode != 0:
                why = "killed (signal 9: out of memory?)" if done.returncode == -9 else done.stderr[-300:]
                rows.append({"param_set": ps, "mode": mode, "failed": why.strip()})
                print(f"{ps} {mode}: failed: {why.strip()}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{args.model}, 2 layers, {args.max_len} tokens: Galois keys by policy")
    print(
        "| set | policy | keys | upload MB | keygen CPU s | peak RSS GB (model loaded / DO keygen / + MO copy) "
        "| rotation CPU s (mean / max) | max error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['param_set']} | {r['mode']} | failed: {r['failed'][:60]} | | | | | |")
            continue
        print(
            f"| {r['param_set']} | {r['mode']} | {r['galois_keys']} | {r['key_upload_bytes'] / 1e6:.0f} "
            f"| {r['keygen_cpu_s']:.1f} | {r['peak_rss_gb_before_keys']:.2f} / {r['peak_rss_gb_after_keygen']:.2f} / "
            f"{r['peak_rss_gb_with_model_owner_copy']:.2f} | {r['rotation_cpu_s_mean']:.3f} / "
            f"{r['rotation_cpu_s_max']:.3f} | {r['rotation_max_abs_err']:.1e} |"
        )
    if args.json:
        from p3eft.fhe.costs import machine_info

        out = {
            "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
