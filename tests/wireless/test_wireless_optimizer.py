"""Joint optimiser: Branch-and-Bound vs exhaustive search, monotone history, feasibility, baselines,
infeasible scenarios."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from p3eft.wireless import (
    InfeasibleScenarioError,
    SolveOptions,
    check_allocation,
    generate_scenario,
    load_costs,
    solve,
    solve_exhaustive,
)
from p3eft.wireless.baselines import BASELINES, run_baseline
from p3eft.wireless.model import Problem, uplink_rate

# (users, seed, w3): mixed choices appear around w3 ~ 0.002-0.01 J/bit with the test costs
BB_CASES = [(4, 0, 0.006), (4, 1, 0.005), (4, 2, 0.0), (5, 3, 0.003), (6, 4, 0.004)]


@pytest.mark.parametrize("users, seed, w3", BB_CASES)
def test_branch_and_bound_equals_exhaustive(cost_file, users, seed, w3):
    t = load_costs(cost_file)
    sc = generate_scenario(users, seed=seed, weights=(1.0, 1.0, w3))
    res = solve(sc, t)
    ex = solve_exhaustive(sc, t)
    assert res.fun == pytest.approx(ex.fun, rel=1e-7, abs=1e-9)
    assert list(res.x) == list(ex.x)
    assert res.bb["complete"]
    assert check_allocation(sc, t, res) == []


def test_branch_and_bound_with_per_node_relaxation_bounds(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(4, seed=5, weights=(1.0, 1.0, 0.003))
    res = solve(sc, t, SolveOptions(relax_bounds=True))
    assert res.fun == pytest.approx(solve_exhaustive(sc, t).fun, rel=1e-7)


def test_history_never_increases_and_result_fields(cost_file):
    t = load_costs(cost_file)
    for u, opts in ((30, SolveOptions(max_nodes=40, max_leaves=3)), (8, None)):
        sc = generate_scenario(u, seed=11, weights=(1.0, 1.0, 0.003), bandwidth_hz=2e6 * u, server_hz=1e9 * u)
        res = solve(sc, t, opts)
        h = np.array(res.history)
        assert np.all(np.diff(h) <= 0)
        assert isinstance(res, OptimizeResult) and res.success
        for key in ("x", "fun", "allocation", "terms", "nit", "history", "message"):
            assert key in res
        assert res.fun == pytest.approx(h[-1])
        terms = res.terms
        w1, w2, w3 = sc.weights
        assert res.fun == pytest.approx(
            w1 * terms["energy_device_j"] + w2 * terms["energy_server_j"] - w3 * terms["privacy_total_bits"]
        )
        assert check_allocation(sc, t, res) == []


def test_fractional_continuous_path_gives_same_answer(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(2, seed=6, weights=(1.0, 1.0, 0.003))
    a = solve(sc, t)
    b = solve(sc, t, SolveOptions(continuous="fractional"))
    assert list(a.x) == list(b.x)
    assert b.fun == pytest.approx(a.fun, rel=5e-3)


def test_baselines_are_feasible_and_never_better(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(5, seed=8, weights=(1.0, 1.0, 0.003))
    best = solve(sc, t)
    for name in BASELINES:
        r = run_baseline(name, sc, t, seed=1)
        assert check_allocation(sc, t, r) == [], name
        assert best.fun <= r.fun + 1e-9 * abs(r.fun), name
    eq = run_baseline("equal_bandwidth", sc, t)
    assert np.allclose(eq.allocation["bandwidth_hz"], sc.bandwidth_hz / 5)
    assert np.allclose(run_baseline("max_power", sc, t).allocation["power_w"], sc.p_max_w)
    assert set(run_baseline("largest_n", sc, t).allocation["parameter_set"]) == {"N32768"}


def test_check_allocation_detects_violations(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(3, seed=0)
    res = solve(sc, t)
    res.allocation["bandwidth_hz"] = np.asarray(res.allocation["bandwidth_hz"]) * 1.5
    res.allocation["cpu_hz"] = np.asarray(res.allocation["cpu_hz"]) * 0 + sc.f_min_hz * 0.5
    v = check_allocation(sc, t, res)
    assert any("bandwidth" in m for m in v) and any("frequency" in m for m in v)


def test_impossible_deadline_names_users(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(5, seed=0)
    dl = list(sc.deadlines_s)
    dl[1] = dl[3] = 0.05
    with pytest.raises(InfeasibleScenarioError, match=r"deadline.*\[1, 3\]") as ei:
        solve(sc.with_(deadlines_s=dl), t)
    assert ei.value.constraint == "deadline" and ei.value.users == [1, 3]


def test_privacy_floor_above_top_set_names_users(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(4, seed=0)
    fl = list(sc.privacy_floor_bits)
    fl[2] = 300.0
    with pytest.raises(InfeasibleScenarioError, match=r"privacy floor.*\[2\].*256") as ei:
        solve(sc.with_(privacy_floor_bits=fl), t)
    assert ei.value.users == [2]


def test_shared_capacity_infeasible(cost_file):
    """Every user could meet its deadline alone, but not all of them with one server."""
    t = load_costs(cost_file)
    sc = generate_scenario(4, seed=0)
    pr = Problem.build(sc, t)
    c = pr.user_costs(np.zeros(4, dtype=int))
    rate = uplink_rate(np.full(4, sc.bandwidth_hz), sc.p_max_w, pr.g, pr.n0)
    need = c.server_cycles / (np.array(sc.deadlines_s) - c.enc_cycles / sc.f_max_hz - c.bits / rate)
    fs = 0.5 * (need.max() + need.sum())
    assert need.max() < fs < need.sum()
    with pytest.raises(InfeasibleScenarioError, match="bandwidth/server capacity"):
        solve(sc.with_(server_hz=fs), t)
    assert np.isfinite(solve(sc.with_(server_hz=1.05 * need.sum()), t).fun)


def test_privacy_floor_restricts_choice(cost_file):
    t = load_costs(cost_file)
    sc = generate_scenario(4, seed=0, weights=(1.0, 1.0, 0.0))
    assert set(solve(sc, t).allocation["parameter_set"]) == {"N8192"}  # no privacy reward: cheapest
    fl = [128.0, 192.0, 128.0, 256.0]
    r = solve(sc.with_(privacy_floor_bits=fl), t)
    assert r.allocation["parameter_set"][1] == "N16384" and r.allocation["parameter_set"][3] == "N32768"
