"""Scenarios: seeded generation, per-user scaling, YAML/JSON round trip, validation, path loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p3eft.errors import P3eftError
from p3eft.wireless import Scenario, ScenarioError, generate_scenario, load_costs, solve
from p3eft.wireless.scenario import path_loss_db

MEASURED = ["N8192-d2", "N16384-d4", "N32768-d8"]


def test_path_loss_and_noise():
    assert path_loss_db(np.array([1000.0]))[0] == pytest.approx(128.1)
    assert path_loss_db(np.array([100.0]))[0] == pytest.approx(128.1 - 37.6)
    sc = generate_scenario(2, seed=0)
    assert sc.noise_psd_w_hz == pytest.approx(10 ** (-17.4) / 1000)


def test_seeded_and_different_seeds_differ():
    a, b, c = generate_scenario(5, seed=3), generate_scenario(5, seed=3), generate_scenario(5, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.distances_m != c.distances_m
    assert all(50 <= d <= 500 for d in a.distances_m)


def test_generated_resources_scale_with_the_user_count():
    for u in (1, 10, 100):
        sc = generate_scenario(u, seed=0)
        assert sc.bandwidth_hz == pytest.approx(2e6 * u) and sc.server_hz == pytest.approx(1e9 * u)
    sc = generate_scenario(10, seed=0, bandwidth_per_user_hz=5e6, server_hz=3e9)
    assert sc.bandwidth_hz == pytest.approx(5e7) and sc.server_hz == pytest.approx(3e9)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    dl = list(generate_scenario(4, seed=1).deadlines_s)
    dl[2] = math.inf
    sc = generate_scenario(4, seed=1, bandwidth_hz=5e6, weights=(1.0, 2.0, 0.01)).with_(deadlines_s=dl)
    p = tmp_path / f"s{suffix}"
    sc.save(p)
    back = Scenario.load(p)
    assert back.to_dict() == sc.to_dict()
    assert np.allclose(back.channel_gain, sc.channel_gain)


def test_validation_errors(tmp_path):
    sc = generate_scenario(3, seed=0)
    d = sc.to_dict()
    d["deadlines_s"] = d["deadlines_s"][:2]
    with pytest.raises(ScenarioError, match="deadlines_s"):
        Scenario.from_dict(d)
    with pytest.raises(ScenarioError, match="unknown"):
        Scenario.from_dict({**sc.to_dict(), "bogus": 1})
    with pytest.raises(ScenarioError, match="earlier version.*examples"):
        Scenario.from_dict({**sc.to_dict(), "data_values": [1, 2, 3]})
    with pytest.raises(ScenarioError, match="weights"):
        sc.with_(weights=(0.0, 1.0, 1.0))
    with pytest.raises(ScenarioError, match="does not exist"):
        Scenario.load(tmp_path / "none.yaml")
    with pytest.raises(ScenarioError, match="repeat"):
        sc.with_(
            candidates=["N8192-d2", {"poly_modulus_degree": 8192, "coeff_modulus_bits": [60, 40, 40, 60]}]
        )


@pytest.mark.parametrize("w", [(math.nan, 1.0, 0.01), (1.0, 1.0, math.nan), (1.0, math.inf, 0.0)])
def test_nan_or_infinite_weight_is_refused_clearly(w):
    with pytest.raises(ScenarioError, match="weights must be finite") as ei:
        generate_scenario(3, seed=0).with_(weights=w)
    assert isinstance(ei.value, P3eftError)


@pytest.mark.parametrize("val", [0.0, -1.0, math.nan])
def test_non_positive_server_products_is_refused(val):
    with pytest.raises(ScenarioError, match="server_products"):
        generate_scenario(3, seed=0).with_(server_products=val)


def test_nan_deadline_is_refused():
    dl = list(generate_scenario(3, seed=0).deadlines_s)
    dl[0] = math.nan
    with pytest.raises(ScenarioError, match="NaN"):
        generate_scenario(3, seed=0).with_(deadlines_s=dl)


def test_infinite_deadline_means_no_deadline_of_its_own(cost_file):
    """An infinite deadline is not 'cannot be met': the user is bounded only by the horizon, and a
    user so freed never costs more energy than with its finite deadline."""
    t = load_costs(cost_file)
    sc = generate_scenario(3, seed=0, candidates=MEASURED)
    dl = list(sc.deadlines_s)
    dl[1] = math.inf
    free = solve(sc.with_(deadlines_s=dl), t)
    fixed = solve(sc, t)
    a = free.allocation
    total = sum(np.asarray(a[k])[1] for k in a if k.startswith("time_"))
    assert dl[1] == math.inf and sc.deadlines_s[1] < total <= sc.horizon_s * (1 + 1e-6)
    assert free.fun <= fixed.fun + 1e-9 * abs(fixed.fun)
