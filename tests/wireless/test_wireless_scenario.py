"""Scenarios: seeded generation, YAML/JSON round trip, validation, path loss."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.wireless import Scenario, ScenarioError, generate_scenario
from p3eft.wireless.scenario import path_loss_db


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


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    sc = generate_scenario(4, seed=1, bandwidth_hz=5e6, weights=(1.0, 2.0, 0.01))
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
    with pytest.raises(ScenarioError, match="weights"):
        sc.with_(weights=(0.0, 1.0, 1.0))
    with pytest.raises(ScenarioError, match="does not exist"):
        Scenario.load(tmp_path / "none.yaml")
