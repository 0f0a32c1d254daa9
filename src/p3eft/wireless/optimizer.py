"""Joint resource allocation: alternate Branch-and-Bound (FHE candidates) and the continuous stage.

Our reconstruction in the PrivTuner paper's frame (docs/wireless.md, "Optimiser"):

1. start from a feasible choice (each user's lowest-privacy candidate it can run alone, or, failing
   that, its fastest one); (b) solve the continuous resources;
2. (a) Branch-and-Bound over the candidates from that incumbent, with Lagrangian bounds at the
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

from p3eft.wireless.continuous import ContinuousSolution, DualSolver, check_user_deadlines
from p3eft.wireless.costs import CostSource, CostTable
from p3eft.wireless.discrete import (
    BranchAndBoundInfo,
    Evaluation,
    Evaluator,
    branch_and_bound,
    combinations,
    exhaustive,
)
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.fractional import solve_fractional
from p3eft.wireless.model import Problem, UserCosts, uplink_rate
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
        top = int(problem.privacy.max())
        raise InfeasibleScenarioError(
            "privacy floor", empty, f"floor above every candidate (the most private gives {top} bits)"
        )


def _start(problem: Problem, evaluator: Evaluator) -> Evaluation:
    """A first incumbent (ours): each user's lowest-privacy allowed candidate that it can run alone
    (ties: the first listed); if that choice is jointly infeasible, each user's fastest candidate."""
    u, k = problem.n_users, problem.n_sets
    alone = np.ones((u, k), dtype=bool)
    t_min = np.empty((u, k))
    s = problem.scenario
    for j in range(k):
        c = problem.user_costs(np.full(u, j))
        alone[check_user_deadlines(problem, c), j] = False
        rate = uplink_rate(np.full(u, s.bandwidth_hz), s.p_max_w, problem.g, problem.n0)
        t_min[:, j] = (
            c.device_cycles / s.f_max_hz
            + c.bits / rate
            + c.down_bits / (problem.eta * s.bandwidth_hz)
            + c.server_cycles / s.server_hz
            + c.latency
        )
    ok = problem.allowed & alone
    key = np.where(ok, problem.privacy[None, :], np.inf)
    first = np.where(
        ok.any(axis=1), np.argmin(key, axis=1), np.argmin(np.where(problem.allowed, t_min, np.inf), 1)
    )
    ev = evaluator(first)
    if np.isfinite(ev.objective):
        return ev
    fastest = evaluator(np.argmin(np.where(problem.allowed, t_min, np.inf), axis=1))
    return fastest if np.isfinite(fastest.objective) else ev


def build_result(problem: Problem, ev: Evaluation, **extra: Any) -> WirelessResult:
    """Assemble the result object of a choice and its continuous solution."""
    s = problem.scenario
    sol = ev.solution
    assert sol is not None
    choice = np.array(ev.choice)
    costs = problem.user_costs(choice)
    steps = [problem.table.steps[k] for k in choice]
    idx = np.arange(problem.n_users)
    w1, w2, w3 = s.weights
    dev = float(np.sum(sol.e_enc + sol.e_tx + sol.e_rx))
    srv = float(np.sum(sol.e_srv + sol.e_dl))
    key_share = problem.key_bits[idx, choice] / costs.bits
    terms = {
        "energy_device_cpu_j": float(np.sum(sol.e_enc)),
        "energy_transmission_j": float(np.sum(sol.e_tx)),
        "energy_key_upload_j": float(np.sum(sol.e_tx * key_share)),
        "energy_receive_j": float(np.sum(sol.e_rx)),
        "energy_device_j": dev,
        "energy_server_cpu_j": float(np.sum(sol.e_srv)),
        "energy_downlink_j": float(np.sum(sol.e_dl)),
        "energy_server_j": srv,
        "energy_total_j": dev + srv,
        "privacy_total_bits": float(costs.privacy.sum()),
        "privacy_mean_bits": float(costs.privacy.mean()),
        "weights": [w1, w2, w3],
    }
    allocation = {
        "candidate": [st.candidate.name for st in steps],
        "N": [st.candidate.n for st in steps],
        "log_q": [st.candidate.log_q for st in steps],
        "privacy_bits": costs.privacy,
        "refresh_round_trips": problem.round_trips[idx, choice],
        "bandwidth_hz": sol.b,
        "power_w": sol.p,
        "cpu_hz": sol.f,
        "server_hz": sol.f_s,
        "time_device_cpu_s": sol.t_enc,
        "time_upload_s": sol.t_tx,
        "time_download_s": sol.t_dl,
        "time_server_s": sol.t_srv,
        "time_latency_s": sol.t_lat,
        "upload_bits": costs.bits,
        "key_upload_bits": problem.key_bits[idx, choice],
        "download_bits": costs.down_bits,
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
    scenario: Scenario,
    table: CostSource | CostTable,
    options: SolveOptions | None = None,
    progress: bool = False,
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
        ev = evaluator(start)
    else:
        ev = _start(problem, evaluator)
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
        w3 = scenario.weights[2]

        def lagrangian_table(ev: Evaluation) -> tuple[float, float, np.ndarray]:
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
            return nu, mu, lag

        for nit in range(1, opts.max_alternations + 1):
            nu, mu, lag = lagrangian_table(ev)
            # price-guided step (ours): every user's best candidate at these prices; cheap (one
            # continuous solve) and often already optimal, which lets the search below prune early
            for _ in range(5):
                table_k = np.where(problem.allowed, lag - w3 * problem.privacy[None, :], np.inf)
                if not np.isfinite(table_k.min(axis=1)).all():
                    break
                guided = evaluator(np.argmin(table_k, axis=1))
                if not guided.objective < ev.objective - 1e-12 * max(1.0, abs(ev.objective)):
                    break
                ev = guided
                history.append(ev.objective)
                nu, mu, lag = lagrangian_table(ev)
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


def exhaustive_size(scenario: Scenario, table: CostSource | CostTable) -> float:
    """Choice vectors :func:`solve_exhaustive` would enumerate (check it before solving anything)."""
    return combinations(Problem.build(scenario, table))


def solve_exhaustive(
    scenario: Scenario,
    table: CostSource | CostTable,
    options: SolveOptions | None = None,
    batched: bool = True,
) -> WirelessResult:
    """Enumerate every candidate combination (each with the continuous optimum; ``batched``: all
    combinations' continuous stages solved together, see :func:`p3eft.wireless.discrete.exhaustive`)."""
    opts = options or SolveOptions()
    t0 = time.perf_counter()
    problem = Problem.build(scenario, table)
    _check_privacy_floors(problem)
    plain_dual = opts.continuous == "dual" and opts.fixed_b is None and not opts.fixed_p_max
    evaluator = Evaluator(problem, make_continuous(problem, opts), dual=plain_dual)
    best = exhaustive(evaluator, batched=batched)
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
        bb={"continuous_solves": evaluator.solves, **evaluator.exhaustive_stats},
        time_s=time.perf_counter() - t0,
        method="exhaustive",
    )


def check_allocation(
    scenario: Scenario, table: CostSource | CostTable, res: WirelessResult, rtol: float = 1e-6
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
    t = (
        costs.device_cycles / f
        + costs.bits / uplink_rate(b, p, problem.g, problem.n0)
        + costs.down_bits / (problem.eta * b)
        + costs.server_cycles / fs
        + costs.latency
    )
    late = np.flatnonzero(t > problem.deadlines * (1 + rtol))
    if late.size:
        out.append(f"deadline missed by users {late.tolist()}")
    low = np.flatnonzero(costs.privacy < np.array(s.privacy_floor_bits) - 1e-9)
    if low.size:
        out.append(f"privacy floor violated by users {low.tolist()}")
    names = {c.name for c in s.candidate_list}
    if any(n not in names for n in a["candidate"]):
        out.append("candidate outside the scenario's candidates")
    return out
