"""General-purpose check of the continuous stage: multi-start SLSQP on the original (b, p, f, f_s).

Not used by the optimiser; tests and ``--check`` runs compare the fast dual method against it, so an
error in our closed forms would show up as a gap.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from p3eft.wireless.continuous import ContinuousSolution, make_solution
from p3eft.wireless.model import Problem, UserCosts, uplink_rate

GHZ = 1e9


def solve_slsqp(
    problem: Problem,
    costs: UserCosts,
    starts: int = 8,
    seed: int = 0,
    fixed_b: np.ndarray | None = None,
    fixed_p_max: bool = False,
) -> ContinuousSolution:
    """Best feasible SLSQP result over random starts (variables scaled to order one).

    ``fixed_b`` / ``fixed_p_max`` pin bandwidths / powers (the baselines' restricted problems)."""
    s = problem.scenario
    u = problem.n_users
    w1, w2, _ = s.weights
    T = problem.deadlines - costs.latency

    def unpack(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return x[:u] * s.bandwidth_hz / u, x[u : 2 * u] * s.p_max_w, x[2 * u : 3 * u] * GHZ, x[3 * u :] * GHZ

    def times(x: np.ndarray) -> np.ndarray:
        b, p, f, fs = unpack(x)
        r = uplink_rate(b, p, problem.g, problem.n0)
        t_dl = costs.down_bits / (problem.eta * b)
        return costs.device_cycles / f + costs.bits / r + t_dl + costs.server_cycles / fs

    def energy(x: np.ndarray) -> float:
        b, p, f, fs = unpack(x)
        r = uplink_rate(b, p, problem.g, problem.n0)
        t_dl = costs.down_bits / (problem.eta * b)
        e = w1 * (s.kappa_device * costs.device_cycles * f**2 + p * costs.bits / r + s.rx_power_w * t_dl)
        e_dl = problem.psd_dl * costs.down_bits / problem.eta
        return float(np.sum(e + w2 * (s.kappa_server * costs.server_cycles * fs**2 + e_dl)))

    cons = [
        {"type": "ineq", "fun": lambda x: 1.0 - times(x) / T},
        {"type": "ineq", "fun": lambda x: float(u) - np.sum(x[:u])},
        {"type": "ineq", "fun": lambda x: s.server_hz / GHZ - np.sum(x[3 * u :])},
    ]
    b_bounds = [(1e-6, float(u))] * u if fixed_b is None else [(x * u / s.bandwidth_hz,) * 2 for x in fixed_b]
    bounds = (
        b_bounds
        + ([(1.0, 1.0)] * u if fixed_p_max else [(1e-6, 1.0)] * u)
        + [(s.f_min_hz / GHZ, s.f_max_hz / GHZ)] * u
        + [(1e-6, s.server_hz / GHZ)] * u
    )
    rng = np.random.default_rng(seed)
    scale = [0.0]  # objective scale fixed by the first start
    best: tuple[float, np.ndarray] | None = None
    for _ in range(starts):
        x0 = np.concatenate(
            [  # pinned coordinates are clipped onto their bounds below
                rng.dirichlet(np.ones(u)) * u * 0.99,
                rng.uniform(0.05, 1.0, u),
                rng.uniform(s.f_min_hz, s.f_max_hz, u) / GHZ,
                rng.dirichlet(np.ones(u)) * s.server_hz / GHZ * 0.99,
            ]
        )
        x0 = np.clip(x0, [lo for lo, _ in bounds], [hi for _, hi in bounds])
        scale[0] = scale[0] or max(energy(x0), 1e-9)
        res = minimize(
            lambda x: energy(x) / scale[0],
            x0,
            method="SLSQP",
            bounds=bounds,
            constraints=cons,
            options={"maxiter": 1000, "ftol": 1e-12},
        )
        x = res.x
        feasible = (
            np.all(times(x) <= T * (1 + 1e-6))
            and np.sum(x[:u]) <= u * (1 + 1e-6)
            and np.sum(x[3 * u :]) <= s.server_hz / GHZ * (1 + 1e-6)
        )
        if feasible and (best is None or energy(x) < best[0]):
            best = (energy(x), x)
    if best is None:
        raise RuntimeError("SLSQP found no feasible point from any start")
    b, p, f, fs = unpack(best[1])
    return make_solution(problem, costs, b, p, f, fs)
