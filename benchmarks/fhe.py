"""Our BSGS products against TenSEAL's built-in ``CKKSVector.mm``: same inputs, same run, same repeats.

Usage: ``python benchmarks/fhe.py [--json FILE] [--repeats K] [--quick]``. Prints one table (N=8192,
one thread): 128x128, 768x768, 768x3072 and a batch of 16 rows of 128, each timed twice for us --
kernel only (weights pre-encoded) and kernel + encoding (a fresh matrix object from the NumPy weights,
as TenSEAL's ``mm`` takes its weights as a list and encodes them in every call) -- against TenSEAL,
median of the same number of repeats for both libraries, wall clock and process CPU time, with the
ratios of each. Then the 2-process speed-up and the refresh precision. ``--json`` writes every figure,
including ``N8192.matvec_768x768_s``, ``N8192.matvec_768x768_with_encode_s``,
``N8192.tenseal_mm_768x768_s`` (and their ``_cpu_s`` twins) and ``N8192.refresh_lambda40_max_err``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm import tqdm

from p3eft.fhe.costs import (
    like_for_like,
    ours_batch_time,
    ours_matvec_time,
    parallel_speedup,
    provenance,
    refresh_precision,
    tenseal_mm,
)
from p3eft.fhe.params import get_param_set

CASES = [("128x128", 128, 128), ("768x768", 768, 768), ("768x3072", 3072, 768), ("batch16x128", 128, 128)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every timing, both libraries (median)")
    ap.add_argument("--quick", action="store_true", help="skip TenSEAL's 768x3072 (about 30 s)")
    ap.add_argument("--jobs", type=int, default=8, help="independent products for the speed-up row")
    args = ap.parse_args()

    params = get_param_set("N8192")
    prov = provenance(f"nice python benchmarks/fhe.py --repeats {args.repeats}", args.repeats)
    results: dict = {}
    for label, n_out, n_in in tqdm(CASES, desc="products", unit="case"):
        if label.startswith("batch"):
            ours = ours_batch_time(params, 16, n_in, args.repeats)
        else:
            ours = ours_matvec_time(params, n_out, n_in, args.repeats)
        theirs = None
        if not (args.quick and label == "768x3072"):
            theirs = tenseal_mm(params, ours["x"], ours["weight"].T, args.repeats)
        rec = like_for_like(ours, theirs)
        results[label] = rec

    speed = parallel_speedup(params, jobs=args.jobs)
    refresh = refresh_precision(params, (30, 40, 50))
    mm = results["768x768"]
    n8192 = {
        "matvec_768x768_s": mm["ours_s"],
        "matvec_768x768_cpu_s": mm["ours_cpu_s"],
        "matvec_768x768_with_encode_s": mm["ours_with_encode_s"],
        "matvec_768x768_with_encode_cpu_s": mm["ours_with_encode_cpu_s"],
        "tenseal_mm_768x768_s": mm.get("tenseal_mm_s"),
        "tenseal_mm_768x768_cpu_s": mm.get("tenseal_mm_cpu_s"),
        "refresh_lambda40_max_err": refresh["lambda_40"]["max_abs_error"],
        "products": results,
        "parallel_768x768": speed,
        "refresh": refresh,
    }
    prov["load_average_1min_at_end"] = os.getloadavg()[0]

    print(f"\nN=8192, one thread, median of {args.repeats} for both libraries")
    print("kernel = weights pre-encoded; +enc = weights encoded in the call (as TenSEAL's mm always does)")
    head = ["product", "ours wall", "ours cpu", "+enc wall", "+enc cpu", "TenSEAL wall", "TenSEAL cpu"]
    head += ["x kernel cpu", "x +enc cpu", "x kernel wall", "x +enc wall", "ours err", "TenSEAL err"]
    print(f"{head[0]:<12}" + "".join(f"{h:>14}" for h in head[1:]))
    for label, rec in results.items():
        has_ts = "tenseal_mm_s" in rec
        cells = [
            f"{rec['ours_s']:.3f}",
            f"{rec['ours_cpu_s']:.3f}",
            f"{rec['ours_with_encode_s']:.3f}",
            f"{rec['ours_with_encode_cpu_s']:.3f}",
        ]
        if has_ts:
            cells += [
                f"{rec['tenseal_mm_s']:.3f}",
                f"{rec['tenseal_mm_cpu_s']:.3f}",
                f"{rec['ratio_kernel_cpu']:.1f}x",
                f"{rec['ratio_with_encode_cpu']:.1f}x",
                f"{rec['ratio_kernel_wall']:.1f}x",
                f"{rec['ratio_with_encode_wall']:.1f}x",
            ]
        else:
            cells += ["skipped"] + ["-"] * 5
        cells += [
            f"{rec['ours_max_abs_error']:.1e}",
            f"{rec['tenseal_max_abs_error']:.1e}" if has_ts else "-",
        ]
        print(f"{label:<12}" + "".join(f"{c:>14}" for c in cells))
    print(
        f"\n{speed['jobs']} x 768x768 in 1 process: {speed['one_process_s']:.2f} s; in {speed['workers']} processes: "
        f"{speed['pool_s']:.2f} s; speed-up {speed['speedup']:.2f}x (1-min load average {speed['load_average_1min']:.1f}; "
        f"CPU cores obtained: {speed['cpu_share_one_process']:.2f} alone, {speed['cpu_share_pool']:.2f} as a pool)"
    )
    for lam, r in refresh.items():
        print(
            f"refresh {lam}: max error {r['max_abs_error']:.1e} for |m| <= {r['bound']}, round trip {r['round_trip_s'] * 1e3:.0f} ms"
        )
    print(
        f"load average (1 min): {prov['load_average_1min_at_start']:.1f} at the start, "
        f"{prov['load_average_1min_at_end']:.1f} at the end"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"provenance": prov, "N8192": n8192}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
