"""Baselines of PrivTuner's wireless system, each completed by the same continuous optimiser.

* ``equal_bandwidth``: b_n = B / U; power, frequencies and parameter sets optimised;
* ``max_power``: p_n = p_max; bandwidth, frequencies and parameter sets optimised;
* ``smallest_n`` / ``largest_n``: every user's allowed candidate with the smallest / largest N (ties:
  the highest security label, then the first listed); resources optimised;
* ``random``: candidates drawn uniformly from each user's allowed ones (seeded); resources optimised.

The proposed method optimises everything, so on exact solves it is never worse than any baseline
(the tests check that).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from p3eft.wireless.costs import CostSource, CostTable
from p3eft.wireless.model import Problem
from p3eft.wireless.optimizer import SolveOptions, WirelessResult, solve
from p3eft.wireless.scenario import Scenario

BASELINES = ("equal_bandwidth", "max_power", "smallest_n", "largest_n", "random")


def run_baseline(
    name: str,
    scenario: Scenario,
    table: CostSource | CostTable,
    seed: int = 0,
    options: SolveOptions | None = None,
) -> WirelessResult:
    """Solve one baseline (raises InfeasibleScenarioError like :func:`solve`)."""
    opts = options or SolveOptions()
    u = scenario.n_users
    problem = Problem.build(scenario, table)
    table = problem.table
    allowed = problem.allowed
    n = np.array([st.candidate.n for st in table.steps], dtype=float)
    order = np.arange(problem.n_sets)

    def pick(sign: float) -> tuple[int, ...] | None:
        if not allowed.any(1).all():
            return None  # the solver reports the privacy floor
        key = np.lexsort((order, -problem.privacy, sign * n))  # N first, then label, then order
        return tuple(int(next(k for k in key if a[k])) for a in allowed)

    if name == "equal_bandwidth":
        opts = replace(opts, fixed_b=tuple([scenario.bandwidth_hz / u] * u))
    elif name == "max_power":
        opts = replace(opts, fixed_p_max=True)
    elif name == "smallest_n":
        opts = replace(opts, fixed_choice=pick(1.0))
    elif name == "largest_n":
        opts = replace(opts, fixed_choice=pick(-1.0))
    elif name == "random":
        rng = np.random.default_rng(seed)
        if allowed.any(1).all():
            opts = replace(opts, fixed_choice=tuple(int(rng.choice(np.flatnonzero(a))) for a in allowed))
    else:
        raise ValueError(f"unknown baseline {name!r} (one of {', '.join(BASELINES)})")
    res = solve(scenario, table, opts)
    res["method"] = name
    return res
