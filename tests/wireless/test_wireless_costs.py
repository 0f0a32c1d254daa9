"""Cost file loading: schema validation, derived cycles, provenance, fitted curves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from p3eft.wireless import CostFileError, generate_scenario, load_costs, parse_costs, solve
from p3eft.wireless.costs import FALLBACK_MATVEC_PER_ENCRYPT, CostCurves, default_cost_path


def test_loads_and_derives_cycles(cost_file):
    t = load_costs(cost_file)
    assert t.names == ["N8192", "N16384", "N32768"]
    s = t.sets[0]
    assert s.ciphertext_bits == 8 * 330_000
    assert s.encrypt_cycles == pytest.approx(0.006 * 3.0e9)
    assert s.server_cycles == pytest.approx(0.34 * 3.0e9)
    assert s.server_cycles_source == "matvec_768x768_s"
    assert [x.security_bits for x in t.sets] == [128, 192, 256]


def test_missing_matvec_falls_back_and_says_so(costs_raw):
    raw = costs_raw
    del raw["N8192"]["matvec_768x768_s"]
    s = parse_costs(raw).sets[0]
    assert s.server_cycles == pytest.approx(0.006 * FALLBACK_MATVEC_PER_ENCRYPT * 3.0e9)
    assert "estimate" in s.server_cycles_source


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r.pop("provenance"), "provenance"),
        (lambda r: r["provenance"]["machine"].pop("cpu_hz"), "cpu_hz"),
        (lambda r: r["N8192"].pop("ciphertext_bytes"), "ciphertext_bytes"),
        (lambda r: r["N16384"].__setitem__("encrypt_s", -1.0), "encrypt_s"),
        (lambda r: [r.pop(k) for k in ("N8192", "N16384", "N32768")], "no parameter sets"),
        (lambda r: r["N32768"].__setitem__("security_bits", 100), "security bits"),
    ],
)
def test_malformed_files_give_clear_errors(mutate, needle, costs_raw):
    raw = costs_raw
    mutate(raw)
    with pytest.raises(CostFileError, match=needle):
        parse_costs(raw, "x.json")


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(CostFileError, match="does not exist"):
        load_costs(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CostFileError, match="not valid JSON"):
        load_costs(bad)


def test_provenance_is_carried_into_results(cost_file, costs_raw):
    t = load_costs(cost_file)
    res = solve(generate_scenario(3, seed=0), t)
    assert res.costs["provenance"]["command"] == costs_raw["provenance"]["command"]
    assert res.costs["path"] == str(cost_file)
    json.dumps(res.to_json_dict())  # serialisable


def test_curves_exact_at_measured_points_and_monotone(cost_file):
    t = load_costs(cost_file)
    c = CostCurves.fit(t)
    a = t.arrays()
    at = c.at(a["n"])
    assert np.allclose(at["bits_per_value"], a["ciphertext_bits"] / a["slots"])
    assert np.allclose(at["privacy_bits"], a["security_bits"])
    ext = c.interval_extremes(8192, 32768)
    assert ext["privacy_bits"] == 256 and ext["bits_per_value"] == pytest.approx(at["bits_per_value"].min())


def test_packaged_cost_file_is_valid_when_present():
    p = default_cost_path()
    if not p.is_file():
        pytest.skip("packaged fhe_costs.json not written yet")
    t = load_costs()
    assert len(t.sets) >= 1 and t.provenance["machine"]["cpu_hz"] > 0
