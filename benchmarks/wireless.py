"""Benchmark of the wireless optimiser: solve time for 10, 100, 1000 users and savings vs baselines.

Scenarios are the generated ones of ``p3eft wireless run --users U``: per-user resources fixed as U
grows (2 MHz of bandwidth and 1 GHz of server capacity per user; everything else the
:class:`Scenario` defaults), seeded. Costs: the packaged cost file (see
``src/p3eft/wireless/data/README.md``) or ``--costs`` (a PrivTuner step-cost file).

    nice -n 5 .venv/bin/python benchmarks/wireless.py --json docs/results/wireless/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from p3eft.wireless import InfeasibleScenarioError, generate_scenario, load_costs, solve
from p3eft.wireless.baselines import BASELINES, run_baseline
from p3eft.wireless.optimizer import check_allocation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="solve-time repeats (median reported)")
    ap.add_argument("--costs", default=None)
    ap.add_argument("--cpu-hz", type=float, default=None, help="clock of the machine that measured --costs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    table = load_costs(args.costs, cpu_hz=args.cpu_hz)
    rows = []
    for u in args.users:
        sc = generate_scenario(u, seed=args.seed)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = solve(sc, table)
            times.append(time.perf_counter() - t0)
        times.sort()
        row = {
            "users": u,
            "solve_s": times[len(times) // 2],
            "solve_s_all": times,
            "alternations": res.nit,
            "bb": res.bb,
            "message": res.message,
            "objective": float(res.fun),
            "energy_total_j": res.terms["energy_total_j"],
            "privacy_mean_bits": res.terms["privacy_mean_bits"],
            "violations": check_allocation(sc, table, res),
            "baselines": {},
        }
        for name in BASELINES:
            try:
                t0 = time.perf_counter()
                rb = run_baseline(name, sc, table, seed=args.seed)
                e = rb.terms["energy_total_j"]
                row["baselines"][name] = {
                    "energy_total_j": e,
                    "objective": float(rb.fun),
                    "privacy_mean_bits": rb.terms["privacy_mean_bits"],
                    "energy_saved_pct": 100.0 * (1.0 - row["energy_total_j"] / e),
                    "objective_gain": float(rb.fun - res.fun),
                    "solve_s": time.perf_counter() - t0,
                }
            except InfeasibleScenarioError as err:
                row["baselines"][name] = {"infeasible": str(err)}
        rows.append(row)

    print(f"\nSolve time of the proposed method (median of {args.repeats})")
    print(
        f"{'users':>6} | {'solve (s)':>9} | {'alt.':>4} | {'B&B nodes':>9} | {'leaves':>6} | {'energy (J)':>10} | "
        f"{'mean P (bits)':>13} | {'objective':>10}"
    )
    for r in rows:
        print(
            f"{r['users']:>6} | {r['solve_s']:>9.3f} | {r['alternations']:>4} | {r['bb']['nodes']:>9} | "
            f"{r['bb']['leaves']:>6} | {r['energy_total_j']:>10.4g} | {r['privacy_mean_bits']:>13.1f} | "
            f"{r['objective']:>10.4g}"
        )
    print("\nEnergy saved by the proposed method vs each baseline, % of the baseline's total energy")
    print("(objective gain = baseline objective - proposed objective, J; >= 0 means the proposed is better)")
    print(f"{'users':>6} | " + " | ".join(f"{b:>22}" for b in BASELINES))
    for r in rows:
        cells = []
        for b in BASELINES:
            d = r["baselines"][b]
            cells.append(
                f"{'infeasible':>22}"
                if "infeasible" in d
                else f"{d['energy_saved_pct']:>7.1f}% (gain {d['objective_gain']:>6.3g})"
            )
        print(f"{r['users']:>6} | " + " | ".join(cells))
    if args.json:
        meta = {
            "command": "python benchmarks/wireless.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v is not None
            ),
            "machine": platform.platform(),
            "processor": platform.processor(),
            "costs": table.resolve(generate_scenario(1).candidate_list).summary(),
            "rows": rows,
        }
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
