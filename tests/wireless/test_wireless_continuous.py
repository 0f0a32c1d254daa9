"""Continuous stage: the fast dual method against a general solver (SLSQP) and against the paper's
fractional-programming method (quadratic transform, cvxpy inner steps)."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.wireless import generate_scenario, load_costs
from p3eft.wireless.continuous import DualSolver
from p3eft.wireless.fractional import solve_fractional
from p3eft.wireless.model import Problem
from p3eft.wireless.reference import solve_slsqp

# (users, parameter set, scenario overrides): unconstrained server, binding server capacity, p_max binding
CASES = [
    (3, 0, {}),
    (4, 2, {"server_hz": 1.2e9}),
    (4, 1, {"p_max_w": 0.005, "bandwidth_hz": 40e6}),
]


def _feasible(pr, costs, sol, rtol=1e-6):
    s = pr.scenario
    t = sol.t_enc + sol.t_tx + sol.t_dl + sol.t_srv + sol.t_lat
    return (
        sol.b.sum() <= s.bandwidth_hz * (1 + rtol)
        and sol.f_s.sum() <= s.server_hz * (1 + rtol)
        and np.all(sol.p <= s.p_max_w * (1 + rtol))
        and np.all(t <= pr.deadlines * (1 + rtol))
        and np.all((sol.f >= s.f_min_hz * (1 - rtol)) & (sol.f <= s.f_max_hz * (1 + rtol)))
    )


@pytest.mark.parametrize("users, k, over", CASES)
def test_dual_matches_slsqp_within_half_percent(cost_file, users, k, over):
    pr = Problem.build(generate_scenario(users, seed=users, **over), load_costs(cost_file))
    costs = pr.user_costs(np.full(users, k))
    dual = DualSolver(pr).solve(costs)
    ref = solve_slsqp(pr, costs, starts=6)
    assert _feasible(pr, costs, dual)
    assert dual.energy <= ref.energy * 1.005
    assert abs(dual.energy - ref.energy) <= 0.005 * ref.energy
    if "server_hz" in over:
        assert dual.prices["mu"] > 0  # the case really exercises the server price
    if "p_max_w" in over:
        assert np.any(np.isclose(dual.p, pr.scenario.p_max_w))


@pytest.mark.parametrize("users, k, over", CASES[:2])
def test_fractional_programming_agrees_and_never_increases(cost_file, users, k, over):
    pr = Problem.build(generate_scenario(users, seed=users, **over), load_costs(cost_file))
    costs = pr.user_costs(np.full(users, k))
    dual = DualSolver(pr).solve(costs)
    fp = solve_fractional(pr, costs, eps=1e-6)
    h = np.array(fp.history)
    assert len(h) >= 2
    assert np.all(np.diff(h) <= 1e-7 * abs(h[0]))  # quadratic transform: monotone descent
    assert _feasible(pr, costs, fp, rtol=1e-5)
    assert abs(fp.energy - dual.energy) <= 0.005 * dual.energy


def test_fixed_bandwidth_and_max_power_modes_match_slsqp_restricted(cost_file):
    """The baselines' restricted continuous problems, against SLSQP with the same pins."""
    pr = Problem.build(generate_scenario(3, seed=7), load_costs(cost_file))
    costs = pr.user_costs(np.zeros(3, dtype=int))
    b = np.full(3, pr.scenario.bandwidth_hz / 3)
    eq = DualSolver(pr, fixed_b=b).solve(costs)
    mp = DualSolver(pr, fixed_p_max=True).solve(costs)
    free = DualSolver(pr).solve(costs)
    assert np.allclose(eq.b, b) and np.allclose(mp.p, pr.scenario.p_max_w)
    assert free.energy <= eq.energy * (1 + 1e-9) and free.energy <= mp.energy * (1 + 1e-9)
    assert _feasible(pr, costs, eq) and _feasible(pr, costs, mp)
    ref_eq = solve_slsqp(pr, costs, starts=4, fixed_b=b)
    ref_mp = solve_slsqp(pr, costs, starts=4, fixed_p_max=True)
    assert np.allclose(ref_eq.b, b) and np.allclose(ref_mp.p, pr.scenario.p_max_w)
    assert abs(eq.energy - ref_eq.energy) <= 0.005 * ref_eq.energy
    assert abs(mp.energy - ref_mp.energy) <= 0.005 * ref_mp.energy


def test_device_frequency_is_the_kkt_closed_form(cost_file):
    pr = Problem.build(generate_scenario(4, seed=2, f_min_hz=1e7), load_costs(cost_file))
    sol = DualSolver(pr).solve(pr.user_costs(np.full(4, 1)))
    w1 = pr.scenario.weights[0]
    f_kkt = np.clip(
        np.cbrt(sol.lam / (2 * w1 * pr.scenario.kappa_device)), pr.scenario.f_min_hz, pr.scenario.f_max_hz
    )
    assert np.allclose(sol.f, f_kkt)


def test_fractional_path_frequencies_satisfy_the_kkt_closed_form(cost_file):
    """In the cvxpy inner step, f equals clip((lambda / (2 w1 kappa))^(1/3)) with lambda the deadline dual."""
    pr = Problem.build(generate_scenario(3, seed=3, f_min_hz=1e7), load_costs(cost_file))
    fp = solve_fractional(pr, pr.user_costs(np.full(3, 1)), eps=1e-6)
    s = pr.scenario
    f_kkt = np.clip(np.cbrt(fp.lam / (2 * s.weights[0] * s.kappa_device)), s.f_min_hz, s.f_max_hz)
    assert np.allclose(fp.f, f_kkt, rtol=1e-3)
