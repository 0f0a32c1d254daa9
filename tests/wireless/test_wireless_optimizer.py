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

# four candidates (three measured, one derived) keep exhaustive search fast: 4^U combinations
FOUR = ["N8192-d2", "N16384-d4", "N16384-d7", "N32768-d8"]
# (users, seed, w3): mixed optimal choices appear around w3 ~ 0.005-0.03 J/bit with the test costs
BB_CASES = [(4, 0, 0.01), (4, 1, 0.02), (4, 2, 0.0), (5, 3, 0.005), (6, 4, 0.015)]


def _sc(users, seed=0, **kw):
    return generate_scenario(users, seed=seed, **{"candidates": FOUR, **kw})


@pytest.mark.parametrize("users, seed, w3", BB_CASES)
def test_branch_and_bound_equals_exhaustive(cost_file, users, seed, w3):
    t = load_costs(cost_file)
    sc = _sc(users, seed=seed, weights=(1.0, 1.0, w3))
    res = solve(sc, t)
    # 4 users: plain one-by-one enumeration; larger: the bounded batched enumeration
    ex = solve_exhaustive(sc, t, batched=users > 4)
    assert res.fun == pytest.approx(ex.fun, rel=1e-7, abs=1e-9)
    assert list(res.x) == list(ex.x)
    assert res.bb["complete"]
    if users > 4:
        st = ex.bb
        assert st["solved_exactly"] + st["excluded_by_own_dual_bound"] == st["combinations"] == 4**users
    assert check_allocation(sc, t, res) == []


def test_branch_and_bound_with_per_node_relaxation_bounds(cost_file):
    t = load_costs(cost_file)
    sc = _sc(4, seed=5, weights=(1.0, 1.0, 0.01))
    res = solve(sc, t, SolveOptions(relax_bounds=True))
    assert res.fun == pytest.approx(solve_exhaustive(sc, t).fun, rel=1e-7)


def test_history_never_increases_and_result_fields(cost_file):
    t = load_costs(cost_file)
    for u, opts in ((30, SolveOptions(max_nodes=40, max_leaves=3)), (8, None)):
        sc = _sc(u, seed=11, weights=(1.0, 1.0, 0.01))
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
    sc = _sc(2, seed=6, weights=(1.0, 1.0, 0.01))
    a = solve(sc, t)
    b = solve(sc, t, SolveOptions(continuous="fractional"))
    assert list(a.x) == list(b.x)
    assert b.fun == pytest.approx(a.fun, rel=5e-3)


def test_baselines_are_feasible_and_never_better(cost_file):
    t = load_costs(cost_file)
    sc = _sc(5, seed=8, weights=(1.0, 1.0, 0.01))
    best = solve(sc, t)
    for name in BASELINES:
        r = run_baseline(name, sc, t, seed=1)
        assert check_allocation(sc, t, r) == [], name
        assert best.fun <= r.fun + 1e-9 * abs(r.fun), name
    eq = run_baseline("equal_bandwidth", sc, t)
    assert np.allclose(eq.allocation["bandwidth_hz"], sc.bandwidth_hz / 5)
    assert np.allclose(run_baseline("max_power", sc, t).allocation["power_w"], sc.p_max_w)
    assert set(run_baseline("largest_n", sc, t).allocation["candidate"]) == {"N32768-d8"}
    assert set(run_baseline("smallest_n", sc, t).allocation["candidate"]) == {"N8192-d2"}


def test_bounded_exhaustive_equals_plain_enumeration(cost_file):
    """Skipping combinations by their own dual bounds never changes the exhaustive optimum."""
    t = load_costs(cost_file)
    for seed, w3 in ((7, 0.01), (8, 0.0)):
        sc = _sc(4, seed=seed, server_hz=2.5e9, weights=(1.0, 1.0, w3))
        plain = solve_exhaustive(sc, t, batched=False)
        bounded = solve_exhaustive(sc, t)
        assert list(bounded.x) == list(plain.x)
        assert bounded.fun == pytest.approx(plain.fun, rel=1e-8)
        assert bounded.bb["excluded_by_own_dual_bound"] > 0


def test_batched_exhaustive_equals_one_by_one(cost_file):
    """The batched continuous solves (exhaustive search) agree with the one-by-one evaluator, with the
    server capacity binding (mu > 0) and with some infeasible combinations."""
    from itertools import product

    from p3eft.wireless.batch import batch_objectives
    from p3eft.wireless.continuous import DualSolver
    from p3eft.wireless.discrete import Evaluator

    t = load_costs(cost_file)
    busy = _sc(2, seed=4, server_hz=0.6e9, weights=(1.0, 1.0, 0.01))
    tight = _sc(2, seed=2).with_(deadlines_s=[60.0, 200.0])
    for sc in (busy, tight):
        pr = Problem.build(sc, t)
        combos = np.array(list(product(range(3), repeat=2)))
        ev = Evaluator(pr, DualSolver(pr).solve)
        one = np.array([ev(c).objective for c in combos])
        both = batch_objectives(pr, combos, chunk=7)
        assert np.array_equal(np.isfinite(one), np.isfinite(both))
        fin = np.isfinite(one)
        assert fin.any()
        assert np.allclose(both[fin], one[fin], rtol=1e-7)
        if sc is busy:  # the case really exercises the server price
            assert any(ev(c).solution.prices["mu"] > 0 for c in combos[fin])
        else:  # and this one has infeasible combinations
            assert not fin.all()


def test_check_allocation_detects_violations(cost_file):
    t = load_costs(cost_file)
    sc = _sc(3, seed=0)
    res = solve(sc, t)
    res.allocation["bandwidth_hz"] = np.asarray(res.allocation["bandwidth_hz"]) * 1.5
    res.allocation["cpu_hz"] = np.asarray(res.allocation["cpu_hz"]) * 0 + sc.f_min_hz * 0.5
    v = check_allocation(sc, t, res)
    assert any("bandwidth" in m for m in v) and any("frequency" in m for m in v)


def test_impossible_deadline_names_users(cost_file):
    t = load_costs(cost_file)
    sc = _sc(5, seed=0)
    dl = list(sc.deadlines_s)
    dl[1] = dl[3] = 0.05
    with pytest.raises(InfeasibleScenarioError, match=r"deadline.*\[1, 3\]") as ei:
        solve(sc.with_(deadlines_s=dl), t)
    assert ei.value.constraint == "deadline" and ei.value.users == [1, 3]


def test_privacy_floor_above_top_set_names_users(cost_file):
    t = load_costs(cost_file)
    sc = _sc(4, seed=0)
    fl = list(sc.privacy_floor_bits)
    fl[2] = 300.0
    with pytest.raises(InfeasibleScenarioError, match=r"privacy floor.*\[2\].*256") as ei:
        solve(sc.with_(privacy_floor_bits=fl), t)
    assert ei.value.users == [2]


def test_shared_capacity_infeasible(cost_file):
    """Every user could meet its deadline alone, but not all of them with one server."""
    t = load_costs(cost_file)
    sc = generate_scenario(4, seed=0, candidates=["N8192-d2"])
    pr = Problem.build(sc, t)
    c = pr.user_costs(np.zeros(4, dtype=int))
    rate = uplink_rate(np.full(4, sc.bandwidth_hz), sc.p_max_w, pr.g, pr.n0)
    t_rest = (
        c.device_cycles / sc.f_max_hz + c.bits / rate + c.down_bits / (pr.eta * sc.bandwidth_hz) + c.latency
    )
    need = c.server_cycles / (np.array(sc.deadlines_s) - t_rest)
    fs = 0.5 * (need.max() + need.sum())
    assert need.max() < fs < need.sum()
    with pytest.raises(InfeasibleScenarioError, match="bandwidth/server capacity"):
        solve(sc.with_(server_hz=fs), t)
    assert np.isfinite(solve(sc.with_(server_hz=3 * need.sum()), t).fun)


def test_privacy_floor_restricts_choice(cost_file):
    t = load_costs(cost_file)
    sc = _sc(4, seed=0, weights=(1.0, 1.0, 0.0))
    free = solve(sc, t)
    assert free.allocation["candidate"][3] != "N32768-d8"  # no privacy reward: not the dearest set
    fl = [128.0, 192.0, 128.0, 256.0]
    r = solve(sc.with_(privacy_floor_bits=fl), t)
    assert r.allocation["privacy_bits"][1] >= 192 and r.allocation["candidate"][3] == "N32768-d8"
    assert r.fun >= free.fun - 1e-9 * abs(free.fun)
