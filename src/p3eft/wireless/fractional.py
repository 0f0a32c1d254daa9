"""The paper's continuous method: fractional programming with the quadratic transform (reference path).

For fixed parameter sets the transmission energy is a sum of ratios sum_n p_n D_n / r_n(b_n, p_n),
which is not convex in (b, p). The quadratic transform (in the manner of Shen & Yu, IEEE TSP 2018;
the form below is ours) writes each ratio as a minimum over an auxiliary y_n > 0:

    A / R = min_y  (y A^2 + 1 / (y R^2)) / 2,   attained at y = 1 / (A R),

with A = p D (convex) and R = b log2(1 + p g / (N0 b)) (concave, so 1/R^2 is convex). The downlink
on the same band adds the convex time c / b and receive energy p_rx c / b (c = D_dl / eta). Alternating the
closed-form y update with the convex problem in (b, p, f, f_s) for fixed y never increases the true
objective. Each inner problem is solved by a real conic solver (cvxpy + Clarabel): rates are relative
entropies (exponential cones), deadlines C_e/f + D/R + C_s/f_s <= T are convex.

This path is slow (a conic solve per iteration) and serves as the reference that the fast dual method
(:mod:`p3eft.wireless.continuous`) is checked against.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np

from p3eft.wireless.continuous import ContinuousSolution, make_solution
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.model import Problem, UserCosts, uplink_rate

LN2 = float(np.log(2.0))
GHZ = 1e9


def solve_fractional(
    problem: Problem,
    costs: UserCosts,
    eps: float = 1e-7,
    max_iter: int = 100,
    start: ContinuousSolution | None = None,
    solver: str = "CLARABEL",
) -> ContinuousSolution:
    """Fractional programming (quadratic transform) with cvxpy inner steps; history of true objectives."""
    s = problem.scenario
    u = problem.n_users
    w1, w2, _ = s.weights
    gamma = problem.g / (problem.n0 * s.bandwidth_hz)  # SNR per W when the user has all the band
    bt = cp.Variable(u, nonneg=True)  # bandwidth as a fraction of B
    p = cp.Variable(u, nonneg=True)  # W
    f = cp.Variable(u)  # GHz
    fs = cp.Variable(u, nonneg=True)  # GHz
    p_ref = cp.Parameter(u, pos=True)  # current p, i.e. A/D at the last iterate
    r_ref = cp.Parameter(u, pos=True)  # current rate in units of B (nats)
    e_ref = cp.Parameter(u, nonneg=True)  # current ratio p D / R (J)
    r_nat = -cp.rel_entr(bt, bt + cp.multiply(gamma, p))  # b log(1 + gamma p / b), concave
    # y A^2 / 2 + 1/(2 y R^2) with y = 1/(A0 R0)  ==  E0/2 ((A/A0)^2 + (R0/R)^2)
    fp_term = cp.sum(
        cp.multiply(
            e_ref / 2, cp.square(cp.multiply(p, 1 / p_ref)) + cp.power(cp.multiply(r_nat, 1 / r_ref), -2)
        )
    )
    e_enc = s.kappa_device * GHZ**2 * cp.sum(cp.multiply(costs.device_cycles, cp.square(f)))
    e_srv = s.kappa_server * GHZ**2 * cp.sum(cp.multiply(costs.server_cycles, cp.square(fs)))
    t_dl = cp.multiply(costs.down_bits / (problem.eta * s.bandwidth_hz), cp.inv_pos(bt))  # same band
    e_rx = s.rx_power_w * cp.sum(t_dl)
    e_dl = float(np.sum(problem.psd_dl * costs.down_bits / problem.eta))  # constant for fixed candidates
    deadline = (
        cp.multiply(costs.device_cycles / GHZ, cp.inv_pos(f))
        + cp.multiply(costs.bits * LN2 / s.bandwidth_hz, cp.inv_pos(r_nat))
        + t_dl
        + cp.multiply(costs.server_cycles / GHZ, cp.inv_pos(fs))
    )
    cons = [
        cp.sum(bt) <= 1,
        p <= s.p_max_w,
        f >= s.f_min_hz / GHZ,
        f <= s.f_max_hz / GHZ,
        cp.sum(fs) <= s.server_hz / GHZ,
    ]
    deadline_con = deadline <= problem.deadlines - costs.latency
    cons.append(deadline_con)
    prob = cp.Problem(cp.Minimize(w1 * (e_enc + fp_term + e_rx) + w2 * (e_srv + e_dl)), cons)

    if start is None:  # equal bandwidth, full power: only used to set the first transform point
        b0, p0 = np.full(u, s.bandwidth_hz / u), np.full(u, s.p_max_w)
    else:
        b0, p0 = start.b, start.p
    hist: list[float] = []
    sol: ContinuousSolution | None = None
    for _ in range(max_iter):
        rate = uplink_rate(b0, p0, problem.g, problem.n0)
        p_ref.value = np.maximum(p0, 1e-12)
        r_ref.value = np.maximum(rate * LN2 / s.bandwidth_hz, 1e-15)
        e_ref.value = p0 * costs.bits / np.maximum(rate, 1e-300)
        try:
            with warnings.catch_warnings():  # the problem is re-canonicalised each step (not DPP); fine here
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=solver)
        except cp.SolverError as err:  # pragma: no cover - solver failure is reported, not hidden
            raise RuntimeError(f"cvxpy failed in the fractional-programming inner step: {err}") from err
        if prob.status in ("infeasible", "infeasible_inaccurate"):
            raise InfeasibleScenarioError(
                "deadline", list(range(u)), "the convex inner problem is infeasible"
            )
        b0 = np.maximum(bt.value, 1e-12) * s.bandwidth_hz
        p0 = np.clip(p.value, 1e-12, s.p_max_w)
        f0 = np.clip(f.value * GHZ, s.f_min_hz, s.f_max_hz)
        fs0 = np.maximum(fs.value, 1e-9) * GHZ
        # the deadline multipliers (J/s) let callers check f against its KKT closed form
        sol = make_solution(
            problem, costs, b0, p0, f0, fs0, lam=np.asarray(deadline_con.dual_value, dtype=float)
        )
        hist.append(sol.energy)
        if len(hist) > 1 and abs(hist[-2] - hist[-1]) <= eps * abs(hist[-1]):
            break
    assert sol is not None
    sol.history = hist
    return sol
