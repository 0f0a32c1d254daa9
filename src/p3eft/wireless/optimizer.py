"""Joint resource allocation: alternate Branch-and-Bound (parameter sets) and the continuous stage.

Our reconstruction in the PrivTuner paper's frame (DESIGN.md section 2.2):

1. start from every user's cheapest allowed parameter set; (b) solve the continuous resources;
2. (a) Branch-and-Bound over the parameter sets from that incumbent, with Lagrangian bounds at the
   continuous stage's prices and continuous-relaxation bounds; every leaf is a continuous solve;
3. repeat (b) on the new choice (new prices, new bounds) until the relative objective change < eps.

Each step only ever accepts a better objective, so the history never increases. Without node limits
the first Branch-and-Bound is already exact (tests check it against exhaustive search); with limits
(large instances) the alternation keeps improving the choice with updated prices.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult

from p3eft.wireless.continuous import ContinuousSolution, DualSolver
from p3eft.wireless.costs import FheCostTable
from p3eft.wireless.discrete import BranchAndBoundInfo, Evaluation, Evaluator, branch_and_bound, exhaustive
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.fractional import solve_fractional
from p3eft.wireless.model import Problem, UserCosts
from p3eft.wireless.scenario import Scenario


@dataclass
class SolveOptions:
    """Knobs of :func:`solve` (defaults scale the search to the instance size)."""

    eps: float = 1e-6  # stop when the relative objective change is below this
    max_alternations: int = 20
    continuous: str = "dual"  # "dual" (fast, exact) or "fractional" (quadratic transform + cvxpy)
    max_nodes: int | None = None  # None: unlimited up to 12 users, else 4 U
    max_leaves: int | None = None  # None: unlimited up to 12 users, else 8 per alternation
    relax_bounds: bool | None = None  # per-node relaxation bounds; None: up to 6 users (root only above)
    fixed_choice: tuple[int, ...] | None = None  # skip the discrete stage (baselines)
    fixed_b: tuple[float, ...] | None = None  # pin bandwidths (baseline)
    fixed_p_max: bool = False  # pin powers at p_max (baseline)


class WirelessResult(OptimizeResult):
    """Result in the manner of :class:`scipy.optimize.OptimizeResult`.

    Attributes: ``x`` (parameter-set index per user), ``allocation`` (per-user dict of arrays),
    ``fun`` (objective), ``terms`` (energies in J, privacy in bits, weights), ``nit`` (alternations),
    ``history`` (objective after each accepted step), ``success``, ``message``, ``bb`` (search
    statistics), ``time_s`` and ``costs`` (provenance of the FHE costs).
    """

    def to_json_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if isinstance(v, float) and not np.isfinite(v):
                return None
            return v

        return {k: conv(v) for k, v in self.items()}

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_json_dict(), fh, indent=2)


def make_continuous(problem: Problem, opts: SolveOptions) -> Any:
    """The continuous-stage solver as a callable costs -> ContinuousSolution."""
    fixed_b = None if opts.fixed_b is None else np.array(opts.fixed_b)
    dual = DualSolver(problem, fixed_b=fixed_b, fixed_p_max=opts.fixed_p_max)
    if opts.continuous == "dual":
        return dual.solve
    if opts.continuous == "fractional":
        if fixed_b is not None or opts.fixed_p_max:
            raise ValueError("the fractional path does not support pinned bandwidth/power")

        def frac(costs: UserCosts) -> ContinuousSolution:
            return solve_fractional(problem, costs)

        return frac
    raise ValueError(f"unknown continuous method {opts.continuous!r} (dual, fractional)")


def _check_privacy_floors(problem: Problem) -> None:
    empty = np.flatnonzero(~problem.allowed.any(axis=1))
    if empty.size:
        top = max(s.security_bits for s in problem.table.sets)
        raise InfeasibleScenarioError(
            "privacy floor", empty, f"floor above every allowed parameter set (top set gives {top} bits)"
        )


def build_result(problem: Problem, ev: Evaluation, **extra: Any) -> WirelessResult:
    """Assemble the result object of a choice and its continuous solution."""
    s = problem.scenario
    sol = ev.solution
    assert sol is not None
    choice = np.array(ev.choice)
    costs = problem.user_costs(choice)
    names = [problem.table.sets[k].name for k in choice]
    w1, w2, w3 = s.weights
    dev = float(np.sum(sol.e_enc + sol.e_tx))
    srv = float(np.sum(sol.e_srv))
    terms = {
        "energy_encryption_j": float(np.sum(sol.e_enc)),
        "energy_transmission_j": float(np.sum(sol.e_tx)),
        "energy_device_j": dev,
        "energy_server_j": srv,
        "energy_total_j": dev + srv,
        "privacy_total_bits": float(costs.privacy.sum()),
        "privacy_mean_bits": float(costs.privacy.mean()),
        "weights": [w1, w2, w3],
    }
    allocation = {
        "parameter_set": names,
        "N": [problem.table.sets[k].n for k in choice],
        "privacy_bits": costs.privacy,
        "bandwidth_hz": sol.b,
        "power_w": sol.p,
        "cpu_hz": sol.f,
        "server_hz": sol.f_s,
        "time_encrypt_s": sol.t_enc,
        "time_upload_s": sol.t_tx,
        "time_server_s": sol.t_srv,
        "upload_bits": costs.bits,
    }
    return WirelessResult(
        x=choice,
        fun=ev.objective,
        allocation=allocation,
        terms=terms,
        prices=sol.prices,
        costs=problem.table.summary(),
        **extra,
    )


def solve(
    scenario: Scenario, table: FheCostTable, options: SolveOptions | None = None, progress: bool = False
) -> WirelessResult:
    """Minimise w1 (E_enc + E_tx) + w2 E_s - w3 sum P over all resources and parameter sets.

    Raises :class:`InfeasibleScenarioError` (naming the binding constraint and the users) when no
    allocation can satisfy every constraint.
    """
    opts = options or SolveOptions()
    t0 = time.perf_counter()
    problem = Problem.build(scenario, table)
    _check_privacy_floors(problem)
    u = problem.n_users
    evaluator = Evaluator(problem, make_continuous(problem, opts))
    small = u <= 12
    max_nodes = opts.max_nodes if opts.max_nodes is not None else (None if small else 4 * u)
    max_leaves = opts.max_leaves if opts.max_leaves is not None else (None if small else 8)
    relax = opts.relax_bounds if opts.relax_bounds is not None else u <= 6

    if opts.fixed_choice is not None:
        start = np.array(opts.fixed_choice)
        bad = np.flatnonzero(~problem.allowed[np.arange(u), start])
        if bad.size:
            raise InfeasibleScenarioError("privacy floor", bad, "the fixed parameter set is below the floor")
    else:
        start = problem.allowed.argmax(axis=1)  # cheapest allowed set per user
    ev = evaluator(start)
    if not np.isfinite(ev.objective):
        assert ev.error is not None
        raise ev.error
    history = [ev.objective]
    infos: list[BranchAndBoundInfo] = []
    message = "fixed parameter sets: continuous stage only"
    nit = 0
    if opts.fixed_choice is None:
        dual = DualSolver(
            problem,
            fixed_b=None if opts.fixed_b is None else np.array(opts.fixed_b),
            fixed_p_max=opts.fixed_p_max,
        )
        message = "maximum alternations reached"
        for nit in range(1, opts.max_alternations + 1):
            assert ev.solution is not None
            nu, mu = ev.solution.prices.get("nu", 0.0), ev.solution.prices.get("mu", 0.0)
            if opts.continuous != "dual":  # prices come from the dual method at this choice
                nu, mu = dual.solve(problem.user_costs(np.array(ev.choice))).prices.values()
            lag = np.column_stack(
                [
                    dual.user_lagrangian(problem.user_costs(np.full(u, k)), nu, mu)
                    for k in range(problem.n_sets)
                ]
            )
            const = -nu * scenario.bandwidth_hz * (opts.fixed_b is None) - mu * scenario.server_hz
            new, info = branch_and_bound(evaluator, ev, lag, const, max_nodes, max_leaves, relax)
            infos.append(info)
            improved = new.objective < ev.objective
            change = abs(ev.objective - new.objective) / max(abs(ev.objective), 1e-12)
            if improved:
                ev = new
                history.append(ev.objective)
            if progress:
                print(f"alternation {nit}: objective {ev.objective:.6g} (B&B nodes {info.nodes})")
            if not improved or change < opts.eps:
                message = (
                    "converged: Branch-and-Bound proved the choice optimal"
                    if info.complete
                    else f"converged: relative objective change {change:.2e} < eps or no improvement"
                )
                break
    bb = {
        "nodes": sum(i.nodes for i in infos),
        "leaves": sum(i.leaves for i in infos),
        "pruned_lagrangian": sum(i.pruned_lagrangian for i in infos),
        "pruned_relaxation": sum(i.pruned_relaxation for i in infos),
        "complete": bool(infos[-1].complete) if infos else None,
        "root_bound": float(infos[-1].root_bound) if infos else None,
        "continuous_solves": evaluator.solves,
    }
    return build_result(
        problem,
        ev,
        nit=nit,
        history=history,
        success=True,
        message=message,
        bb=bb,
        time_s=time.perf_counter() - t0,
        method="proposed",
    )


def solve_exhaustive(
    scenario: Scenario, table: FheCostTable, options: SolveOptions | None = None
) -> WirelessResult:
    """Enumerate every parameter-set combination (each with the continuous optimum)."""
    opts = options or SolveOptions()
    t0 = time.perf_counter()
    problem = Problem.build(scenario, table)
    _check_privacy_floors(problem)
    evaluator = Evaluator(problem, make_continuous(problem, opts))
    best = exhaustive(evaluator)
    if not np.isfinite(best.objective):
        assert best.error is not None
        raise best.error
    return build_result(
        problem,
        best,
        nit=1,
        history=[best.objective],
        success=True,
        message="exhaustive enumeration",
        bb={"continuous_solves": evaluator.solves},
        time_s=time.perf_counter() - t0,
        method="exhaustive",
    )


def check_allocation(
    scenario: Scenario, table: FheCostTable, res: WirelessResult, rtol: float = 1e-6
) -> list[str]:
    """Every constraint violated by a result (empty list = feasible within ``rtol``)."""
    s = scenario
    a = res.allocation
    out = []
    b, p, f, fs = (np.asarray(a[k]) for k in ("bandwidth_hz", "power_w", "cpu_hz", "server_hz"))
    if b.sum() > s.bandwidth_hz * (1 + rtol) or (b < 0).any():
        out.append(f"bandwidth: sum {b.sum():.6g} > B {s.bandwidth_hz:.6g} or negative")
    if (p > s.p_max_w * (1 + rtol)).any() or (p < 0).any():
        out.append("power outside [0, p_max]")
    if (f > s.f_max_hz * (1 + rtol)).any() or (f < s.f_min_hz * (1 - rtol)).any():
        out.append("device frequency outside [f_min, f_max]")
    if fs.sum() > s.server_hz * (1 + rtol) or (fs <= 0).any():
        out.append(f"server capacity: sum {fs.sum():.6g} > F_s {s.server_hz:.6g}")
    problem = Problem.build(scenario, table)
    costs = problem.user_costs(np.asarray(res.x))
    from p3eft.wireless.model import uplink_rate

    t = (
        costs.enc_cycles / f
        + costs.bits / uplink_rate(b, p, problem.g, problem.n0)
        + costs.server_cycles / fs
    )
    late = np.flatnonzero(t > np.array(s.deadlines_s) * (1 + rtol))
    if late.size:
        out.append(f"deadline missed by users {late.tolist()}")
    low = np.flatnonzero(costs.privacy < np.array(s.privacy_floor_bits) - 1e-9)
    if low.size:
        out.append(f"privacy floor violated by users {low.tolist()}")
    names = {table.sets[table.index(n)].name for n in s.allowed_sets}
    if any(n not in names for n in a["parameter_set"]):
        out.append("parameter set outside allowed_sets")
    return out
