"""Benchmark of the wireless optimiser: solve time for 10, 100, 1000 users and savings vs baselines.

Scenarios are the generated ones of ``p3eft wireless run --users U``: per-user resources fixed as U
grows (2 MHz of bandwidth and 1 GHz of server capacity per user; everything else the
:class:`~p3eft.wireless.scenario.Scenario` defaults), seeded. Used by ``benchmarks/wireless.py`` and
``p3eft wireless regenerate``; timings are printed and written, never asserted.
"""

from __future__ import annotations

import platform
import time
from typing import Any

from p3eft.wireless.baselines import BASELINES, run_baseline
from p3eft.wireless.costs import CostSource
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.optimizer import check_allocation, solve
from p3eft.wireless.scenario import generate_scenario


def run_benchmark(
    table: CostSource,
    users: list[int],
    seed: int = 0,
    repeats: int = 3,
    deadline_s: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per user count: median solve time, search statistics, energies, baselines
    (``deadline_s``: the generated deadlines' range, default the generator's)."""
    rows = []
    for u in users:
        sc = generate_scenario(u, seed=seed, **({} if deadline_s is None else {"deadline_s": deadline_s}))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = solve(sc, table)
            times.append(time.perf_counter() - t0)
        times.sort()
        row: dict[str, Any] = {
            "users": u,
            "solve_s": times[len(times) // 2],
            "solve_s_all": times,
            "alternations": res.nit,
            "bb": res.bb,
            "message": res.message,
            "objective": float(res.fun),
            "energy_total_j": res.terms["energy_total_j"],
            "privacy_mean_bits": res.terms["privacy_mean_bits"],
            "candidates_chosen": {
                n: res.allocation["candidate"].count(n) for n in sorted(set(res.allocation["candidate"]))
            },
            "violations": check_allocation(sc, table, res),
            "baselines": {},
        }
        for name in BASELINES:
            try:
                t0 = time.perf_counter()
                rb = run_baseline(name, sc, table, seed=seed)
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
    return rows


def format_tables(rows: list[dict[str, Any]], repeats: int) -> str:
    """The two tables the benchmark prints."""
    lines = [f"Solve time of the proposed method (median of {repeats})"]
    lines.append(
        f"{'users':>6} | {'solve (s)':>9} | {'alt.':>4} | {'B&B nodes':>9} | {'leaves':>6} | {'energy (J)':>10} | "
        f"{'mean P (bits)':>13} | {'objective':>10}"
    )
    for r in rows:
        lines.append(
            f"{r['users']:>6} | {r['solve_s']:>9.3f} | {r['alternations']:>4} | {r['bb']['nodes']:>9} | "
            f"{r['bb']['leaves']:>6} | {r['energy_total_j']:>10.4g} | {r['privacy_mean_bits']:>13.1f} | "
            f"{r['objective']:>10.4g}"
        )
    lines.append("")
    lines.append("Energy saved by the proposed method vs each baseline, % of the baseline's total energy")
    lines.append(
        "(objective gain = baseline objective - proposed objective, J; >= 0 means the proposed is better)"
    )
    lines.append(f"{'users':>6} | " + " | ".join(f"{b:>22}" for b in BASELINES))
    for r in rows:
        cells = []
        for b in BASELINES:
            d = r["baselines"][b]
            cells.append(
                f"{'infeasible':>22}"
                if "infeasible" in d
                else f"{d['energy_saved_pct']:>7.1f}% (gain {d['objective_gain']:>6.3g})"
            )
        lines.append(f"{r['users']:>6} | " + " | ".join(cells))
    return "\n".join(lines)


def benchmark_record(table: CostSource, rows: list[dict[str, Any]], command: str) -> dict[str, Any]:
    return {
        "command": command,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "costs": table.for_scenario(generate_scenario(1)).summary(),
        "rows": rows,
    }
