"""Benchmark of the wireless optimiser: solve time for 10, 100, 1000 users and savings vs baselines.

Thin wrapper around :mod:`p3eft.wireless.bench` (also run by ``p3eft wireless regenerate``). Costs: the
packaged cost file (see ``src/p3eft/wireless/data/README.md``) or ``--costs`` (a PrivTuner step-cost
file). Run it on a quiet machine, niced:

    nice -n 5 .venv/bin/python benchmarks/wireless.py --json docs/results/wireless/benchmark.json
"""

from __future__ import annotations

import argparse
import json

from p3eft.wireless import load_costs
from p3eft.wireless.bench import benchmark_record, format_tables, run_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="solve-time repeats (median reported)")
    ap.add_argument("--costs", nargs="+", default=None, help="cost file(s) (several PrivTuner step files)")
    ap.add_argument("--deadline-s", default=None, help="'LO,HI' seconds: range of the generated deadlines")
    ap.add_argument("--cpu-hz", type=float, default=None, help="clock of the machine that measured --costs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    table = load_costs(args.costs, cpu_hz=args.cpu_hz)
    dl = None if args.deadline_s is None else tuple(float(x) for x in args.deadline_s.split(","))
    rows = run_benchmark(table, args.users, seed=args.seed, repeats=args.repeats, deadline_s=dl)
    print("\n" + format_tables(rows, args.repeats))
    if args.json:
        command = "python benchmarks/wireless.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None
        )
        with open(args.json, "w") as fh:
            json.dump(benchmark_record(table, rows, command), fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
