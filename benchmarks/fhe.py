"""Our BSGS products against TenSEAL's built-in ``CKKSVector.mm``, same inputs, same run, one thread.

Usage: ``python benchmarks/fhe.py [--json FILE] [--repeats K] [--quick]``. Prints one table (N=8192):
128x128, 768x768, 768x3072 and a batch of 16 rows of 128, then the 2-process speed-up and the
refresh precision. ``--json`` writes every figure, including ``N8192.matvec_768x768_s`` and
``N8192.tenseal_mm_768x768_s``. Timings are wall clock on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from p3eft.fhe.costs import (
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
    ap.add_argument("--repeats", type=int, default=3, help="repeats of our products (median)")
    ap.add_argument("--quick", action="store_true", help="skip TenSEAL's 768x3072 (about 30 s)")
    ap.add_argument("--jobs", type=int, default=8, help="independent products for the speed-up row")
    args = ap.parse_args()

    params = get_param_set("N8192")
    results: dict = {}
    rows = []
    for label, n_out, n_in in tqdm(CASES, desc="products", unit="case"):
        if label.startswith("batch"):
            ours = ours_batch_time(params, 16, n_in, args.repeats)
            theirs = tenseal_mm(params, ours["x"], ours["weight"].T)
        else:
            ours = ours_matvec_time(params, n_out, n_in, args.repeats)
            theirs = None
            if not (args.quick and label == "768x3072"):
                theirs = tenseal_mm(params, ours["x"], ours["weight"].T)
        rec = {"ours_s": ours["seconds"], "ours_max_abs_error": ours["max_abs_error"]}
        if "cpu_seconds" in ours:
            rec.update(ours_cpu_s=ours["cpu_seconds"], ours_min_s=ours["min_seconds"])
        if theirs is not None:
            rec.update(
                tenseal_mm_s=theirs["seconds"],
                tenseal_mm_cpu_s=theirs["cpu_seconds"],
                tenseal_max_abs_error=theirs["max_abs_error"],
                speedup=theirs["seconds"] / ours["seconds"],
            )
        results[label] = rec
        rows.append((label, rec))

    speed = parallel_speedup(params, jobs=args.jobs)
    refresh = refresh_precision(params)
    n8192 = {
        "matvec_768x768_s": results["768x768"]["ours_s"],
        "matvec_768x768_cpu_s": results["768x768"]["ours_cpu_s"],
        "tenseal_mm_768x768_s": results["768x768"].get("tenseal_mm_s"),
        "tenseal_mm_768x768_cpu_s": results["768x768"].get("tenseal_mm_cpu_s"),
        "products": results,
        "parallel_768x768": speed,
        "refresh": refresh,
    }

    print(f"\nN=8192, one thread, median of {args.repeats} (ours) / 1 (TenSEAL)")
    print(
        "wall = wall clock; cpu = CPU time of this process (what waiting for a shared core does not inflate)"
    )
    head = [
        "product",
        "ours wall",
        "ours cpu",
        "TenSEAL wall",
        "TenSEAL cpu",
        "speed-up cpu",
        "ours err",
        "TenSEAL err",
    ]
    print(f"{head[0]:<12}" + "".join(f"{h:>13}" for h in head[1:]))
    for label, rec in rows:
        has_ts = "tenseal_mm_s" in rec
        cells = [
            f"{rec['ours_s']:.3f}",
            f"{rec['ours_cpu_s']:.3f}",
            f"{rec['tenseal_mm_s']:.3f}" if has_ts else "skipped",
            f"{rec['tenseal_mm_cpu_s']:.3f}" if has_ts else "-",
            f"{rec['tenseal_mm_cpu_s'] / rec['ours_cpu_s']:.1f}x" if has_ts else "-",
            f"{rec['ours_max_abs_error']:.1e}",
            f"{rec['tenseal_max_abs_error']:.1e}" if has_ts else "-",
        ]
        print(f"{label:<12}" + "".join(f"{c:>13}" for c in cells))
    print(
        f"\n{speed['jobs']} x 768x768 in 1 process: {speed['one_process_s']:.2f} s; in {speed['workers']} processes: "
        f"{speed['pool_s']:.2f} s; speed-up {speed['speedup']:.2f}x (1-min load average {speed['load_average_1min']:.1f}; "
        f"CPU cores obtained: {speed['cpu_share_one_process']:.2f} alone, {speed['cpu_share_pool']:.2f} as a pool)"
    )
    for lam, r in refresh.items():
        print(
            f"refresh {lam}: max error {r['max_abs_error']:.1e} for |m| <= {r['bound']}, round trip {r['round_trip_s'] * 1e3:.0f} ms"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"provenance": provenance("python benchmarks/fhe.py", args.repeats), "N8192": n8192}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
