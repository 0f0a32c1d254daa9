"""Discrete stage: the FHE candidate (N, chain) of every user, by Branch-and-Bound (and exhaustive search).

J(choice) = (optimal continuous energy for that choice) - w3 sum_n P(N_n); each evaluation is a full
continuous solve. Branch-and-Bound (ours, in the paper's frame) fixes users one at a time, in order of
how much their choice matters at the current prices, depth first. A node (some users fixed, the rest
free within their allowed sets) is pruned when a lower bound reaches the incumbent. Two bounds, both
valid for every choice in the node:

* Lagrangian bound: with prices (nu, mu) on bandwidth and server capacity,
  sum_fixed l_n(N_n) + sum_free min_k l_n(k) - nu B - mu F_s (weak duality; cheap, a table lookup);
* continuous relaxation: each free user's costs relaxed to the componentwise minimum over its
  candidates (and its privacy to the maximum), then one continuous solve. If the relaxation is
  infeasible, so is every choice below the node.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from p3eft.wireless.continuous import ContinuousSolution
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.model import Problem, UserCosts

Solve = Callable[[UserCosts], ContinuousSolution]


@dataclass
class Evaluation:
    choice: tuple[int, ...]
    objective: float  # inf if infeasible
    solution: ContinuousSolution | None
    error: InfeasibleScenarioError | None = None


class Evaluator:
    """J(choice) with a cache: one continuous solve per distinct choice."""

    def __init__(self, problem: Problem, solve: Solve, dual: bool = False) -> None:
        """``dual``: ``solve`` is the plain dual method (so batched exhaustive search may replace it)."""
        self.problem = problem
        self.solve = solve
        self.dual = dual
        self.exhaustive_stats: dict[str, int] = {}
        self.cache: dict[tuple[int, ...], Evaluation] = {}
        self.solves = 0

    def __call__(self, choice: np.ndarray | tuple[int, ...]) -> Evaluation:
        key = tuple(int(c) for c in choice)
        if key not in self.cache:
            self.solves += 1
            costs = self.problem.user_costs(np.array(key))
            w3 = self.problem.scenario.weights[2]
            try:
                sol = self.solve(costs)
                self.cache[key] = Evaluation(key, sol.energy - w3 * float(costs.privacy.sum()), sol)
            except InfeasibleScenarioError as err:
                self.cache[key] = Evaluation(key, np.inf, None, err)
        return self.cache[key]

    def relaxation_bound(self, fixed: dict[int, int], free_lo: np.ndarray, free_hi: np.ndarray) -> float:
        """Lower bound from the continuous relaxation of the free users (inf if infeasible)."""
        pr = self.problem
        lo, hi = free_lo.copy(), free_hi.copy()
        for n, k in fixed.items():
            lo[n] = hi[n] = k
        relaxed = pr.relaxed_costs(lo, hi)
        real = pr.user_costs(lo)
        fixed_mask = lo == hi
        costs = UserCosts(
            **{
                k: np.where(fixed_mask, getattr(real, k), getattr(relaxed, k))
                for k in ("bits", "down_bits", "device_cycles", "server_cycles", "latency", "privacy")
            }
        )
        self.solves += 1
        try:
            sol = self.solve(costs)
        except InfeasibleScenarioError:
            return np.inf
        return sol.energy - pr.scenario.weights[2] * float(costs.privacy.sum())


#: Most choice vectors :func:`exhaustive` enumerates (6 users x 6 candidates = 46656 fits).
EXHAUSTIVE_LIMIT = 50_000


def combinations(problem: Problem) -> float:
    """Number of allowed choice vectors (the product of every user's allowed candidates)."""
    return float(np.prod(problem.allowed.sum(axis=1), dtype=float))


def exhaustive(evaluator: Evaluator, batched: bool = True) -> Evaluation:
    """Best choice by enumerating every allowed combination (small instances only).

    ``batched=False`` solves every combination's continuous stage one by one. ``batched`` (ours) is
    exact too and much faster: every combination gets its *own* dual bound (the maximum of its dual
    function over a grid of prices, weak duality); combinations are then solved exactly in the order
    of their bounds, together as array operations (:mod:`p3eft.wireless.batch`), until the next bound
    is no better than the best solved objective. No combination is skipped without a proof that it
    cannot be better. ``evaluator.exhaustive_stats`` says how many were solved and how many bounded.
    """
    pr = evaluator.problem
    options = [np.flatnonzero(pr.allowed[n]).tolist() for n in range(pr.n_users)]
    if combinations(pr) > EXHAUSTIVE_LIMIT:
        raise ValueError(f"exhaustive search is limited to {EXHAUSTIVE_LIMIT} combinations")
    combos = np.array(list(itertools.product(*options)), dtype=int)
    if batched and evaluator.dual:
        return _exhaustive_batched(evaluator, combos)
    best: Evaluation | None = None
    for combo in combos:
        ev = evaluator(combo)
        if best is None or ev.objective < best.objective:
            best = ev
    assert best is not None
    return best


def _exhaustive_batched(evaluator: Evaluator, combos: np.ndarray, block: int = 128) -> Evaluation:
    from p3eft.wireless.batch import batch_objectives, dual_lower_bounds

    pr = evaluator.problem
    s = pr.scenario
    # price scales from the uniform choices (every user on candidate k), then a log grid around them
    nus, mus = [], []
    for k in range(pr.n_sets):
        ev = evaluator(np.where(pr.allowed[:, k], k, np.argmax(pr.allowed, axis=1)))
        if ev.solution is not None:
            nus.append(ev.solution.prices.get("nu", 0.0))
            mus.append(ev.solution.prices.get("mu", 0.0))
    nu_ref = max([n for n in nus if n > 0], default=1e-6)
    mu_ref = max([m for m in mus if m > 0], default=nu_ref * s.bandwidth_hz / s.server_hz)
    nu_grid = nu_ref * np.logspace(-1.5, 1.5, 13)
    mu_grid = np.concatenate([[0.0], mu_ref * np.logspace(-2, 1.5, 12)])
    nus_g, mus_g = (a.ravel() for a in np.meshgrid(nu_grid, mu_grid))
    bounds = dual_lower_bounds(pr, combos, nus_g, mus_g)
    order = np.argsort(bounds, kind="stable")
    best_obj, best_combo, solved = np.inf, None, 0
    for i in range(0, len(order), block):
        idx = order[i : i + block]
        tol = 1e-9 * max(1.0, abs(best_obj)) if np.isfinite(best_obj) else 0.0
        idx = idx[bounds[idx] < best_obj - tol] if np.isfinite(best_obj) else idx[np.isfinite(bounds[idx])]
        if idx.size == 0:
            break
        obj = batch_objectives(pr, combos[idx])
        solved += idx.size
        j = int(np.argmin(obj))
        if obj[j] < best_obj:
            best_obj, best_combo = float(obj[j]), combos[idx[j]]
    evaluator.solves += solved
    evaluator.exhaustive_stats = {
        "combinations": len(combos),
        "solved_exactly": solved,
        "excluded_by_own_dual_bound": len(combos) - solved,
        "price_grid": len(nus_g),
    }
    if best_combo is None:
        return evaluator(combos[0])  # infeasible everywhere: the one-by-one error message
    return evaluator(best_combo)


@dataclass
class BranchAndBoundInfo:
    nodes: int = 0
    leaves: int = 0
    pruned_lagrangian: int = 0
    pruned_relaxation: int = 0
    complete: bool = True  # False when a node limit stopped the search
    root_bound: float = -np.inf
    history: list[float] = field(default_factory=list)


def branch_and_bound(
    evaluator: Evaluator,
    incumbent: Evaluation,
    lagrangian: np.ndarray,
    lagrangian_const: float,
    max_nodes: int | None = None,
    max_leaves: int | None = None,
    relax_bounds: bool = True,  # relaxation bound at every node (else only at the root)
    rtol: float = 1e-9,
) -> tuple[Evaluation, BranchAndBoundInfo]:
    """Depth-first Branch-and-Bound from an incumbent; returns the best evaluation found.

    ``lagrangian`` is the (U, K) table l_n(k) at the current prices (inf where not allowed or
    infeasible) and ``lagrangian_const`` = -nu B - mu F_s. Without limits the result is optimal.
    """
    pr = evaluator.problem
    u = pr.n_users
    w3 = pr.scenario.weights[2]
    table = np.where(pr.allowed, lagrangian - w3 * pr.privacy[None, :], np.inf)
    allowed_idx = [np.flatnonzero(pr.allowed[n]) for n in range(u)]
    lo = np.array([a[0] for a in allowed_idx])
    hi = np.array([a[-1] for a in allowed_idx])
    best_free = table.min(axis=1)
    # branch first on users whose choice matters most at these prices (largest regret)
    srt = np.sort(table, axis=1)
    if srt.shape[1] > 1:
        regret = np.where(np.isfinite(srt[:, 1]), srt[:, 1] - srt[:, 0], np.inf)
    else:  # a single candidate: nothing to choose
        regret = np.zeros(u)
    order = np.argsort(-np.nan_to_num(regret, posinf=1e300))
    info = BranchAndBoundInfo()
    best = incumbent
    info.history.append(best.objective)
    tol = lambda: rtol * max(1.0, abs(best.objective))  # noqa: E731

    root_lag = float(best_free.sum()) + lagrangian_const
    info.root_bound = root_lag
    info.root_bound = max(root_lag, evaluator.relaxation_bound({}, lo, hi))  # root: always
    if info.root_bound >= best.objective - tol():
        return best, info

    choice = np.full(u, -1)

    # stack of (depth, lagrangian partial sum of fixed users) frames; iterative DFS
    def children(depth: int) -> list[int]:
        n = order[depth]
        ks = [int(k) for k in allowed_idx[n] if np.isfinite(table[n, k])]
        return sorted(ks, key=lambda k: table[n, k])

    free_sum_after = np.concatenate([np.cumsum(best_free[order][::-1])[::-1], [0.0]])
    stack: list[tuple[int, list[int], float]] = [(0, children(0), 0.0)]
    while stack:
        depth, todo, fixed_sum = stack[-1]
        if not todo:
            stack.pop()
            if depth < u:
                choice[order[depth]] = -1
            continue
        k = todo.pop(0)
        n = order[depth]
        choice[n] = k
        info.nodes += 1
        if max_nodes is not None and info.nodes > max_nodes:
            info.complete = False
            break
        part = fixed_sum + table[n, k]
        lag_bound = part + free_sum_after[depth + 1] + lagrangian_const
        if lag_bound >= best.objective - tol():
            info.pruned_lagrangian += 1
            continue
        if depth + 1 == u:
            info.leaves += 1
            ev = evaluator(choice.copy())
            if ev.objective < best.objective - tol():
                best = ev
                info.history.append(best.objective)
            if max_leaves is not None and info.leaves >= max_leaves:
                info.complete = False
                break
            continue
        if relax_bounds:
            fixed = {int(order[d]): int(choice[order[d]]) for d in range(depth + 1)}
            if evaluator.relaxation_bound(fixed, lo, hi) >= best.objective - tol():
                info.pruned_relaxation += 1
                continue
        stack.append((depth + 1, children(depth + 1), part))
    return best, info
