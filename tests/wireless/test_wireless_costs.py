"""Cost files: schema validation, CPU-time cycles, keys and refresh traffic in the energy, the
HE-standard labels of the (N, chain) candidates, and the derived (ours) costs of unmeasured chains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from p3eft.fhe.params import HE_STANDARD_MAX_LOGQ, security_level
from p3eft.wireless import (
    Candidate,
    CostFileError,
    ScenarioError,
    default_candidates,
    generate_scenario,
    load_costs,
    parse_costs,
    solve,
)
from p3eft.wireless.costs import default_cost_path
from p3eft.wireless.derive import ENGINE_WORKLOAD, refresh_round_trips
from p3eft.wireless.model import Problem

MEASURED = ["N8192-d2", "N16384-d4", "N32768-d8"]  # the chains the test step file measured


def _sc(users=3, seed=0, **kw):
    return generate_scenario(users, seed=seed, **{"candidates": MEASURED, **kw})


def test_step_file_measured_entries_are_used_as_measured(cost_file, costs_raw):
    src = load_costs(cost_file)
    tab = src.resolve(default_candidates())
    by = {s.candidate.name: s for s in tab.steps}
    m = costs_raw["param_sets"]["N16384"]["per_example"]
    s = by["N16384-d4"]
    assert (s.device_cpu_s, s.server_cpu_s, s.bytes_up, s.bytes_down) == (0.4, 7.0, 1.3e7, 9.0e6)
    assert s.refresh_round_trips == m["refresh_round_trips"] and s.source.startswith("measured")
    assert by["N16384-d7"].source.startswith("derived (ours)")
    a = tab.arrays()
    assert a["device_cycles"][2] == pytest.approx(0.4 * 3.0e9)  # CPU seconds x the measuring clock
    assert a["server_cycles"][2] == pytest.approx(7.0 * 3.0e9)


def test_cycles_come_from_cpu_time_not_wall_time(costs_raw, tmp_path):
    """Wall and CPU times differ in the file: only the CPU times move the energy."""
    sc = _sc()

    def energy(raw):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(raw))
        return solve(sc, load_costs(p)).terms

    base = energy(costs_raw)
    for e in costs_raw["param_sets"].values():
        e["per_example"]["device_wall_s"] *= 50
        e["per_example"]["server_wall_s"] *= 50
    assert energy(costs_raw)["energy_total_j"] == pytest.approx(base["energy_total_j"], rel=1e-12)
    for e in costs_raw["param_sets"].values():
        e["per_example"]["device_cpu_s"] *= 2
        e["per_example"]["server_cpu_s"] *= 2
    more = energy(costs_raw)
    assert more["energy_device_cpu_j"] > base["energy_device_cpu_j"]
    assert more["energy_server_cpu_j"] > base["energy_server_cpu_j"]


def test_engine_file_uses_cpu_times(engine_raw, tmp_path):
    sc = generate_scenario(3, seed=0)

    def tab(raw):
        return parse_costs(raw, "e.json").resolve(sc.candidate_list).arrays()

    base = tab(engine_raw)
    for k in ("N8192", "N16384", "N32768"):
        engine_raw[k]["encrypt_s"] *= 10
        engine_raw[k]["matvec_768x768_s"] *= 10
    same = tab(engine_raw)
    assert np.allclose(same["device_cycles"], base["device_cycles"])
    assert np.allclose(same["server_cycles"], base["server_cycles"])
    for k in ("N8192", "N16384", "N32768"):
        engine_raw[k]["encrypt_cpu_s"] *= 2
    assert np.all(tab(engine_raw)["device_cycles"] > base["device_cycles"])


def test_key_upload_is_amortised_into_the_uplink_energy(cost_file, costs_raw, tmp_path):
    sc = _sc(users=3, weights=(1.0, 1.0, 0.0))
    src = load_costs(cost_file)
    pr = Problem.build(sc, src)
    keys = np.array([costs_raw["param_sets"][k]["key_upload_bytes"] for k in ("N8192", "N16384", "N32768")])
    per_step = 8 * keys[None, :] / (np.array(sc.dataset_examples)[:, None] * sc.epochs)
    assert np.allclose(pr.key_bits, np.array(sc.examples)[:, None] * per_step)
    r = solve(sc, src)
    assert r.terms["energy_key_upload_j"] > 0
    # more epochs: the key is spread over more steps, so this round's uplink energy falls
    r2 = solve(sc.with_(epochs=100.0), src)
    assert r2.terms["energy_key_upload_j"] < r.terms["energy_key_upload_j"]
    for e in costs_raw["param_sets"].values():
        e["key_upload_bytes"] *= 20
    p = tmp_path / "k.json"
    p.write_text(json.dumps(costs_raw))
    assert solve(sc, load_costs(p)).terms["energy_transmission_j"] > r.terms["energy_transmission_j"]


def test_refresh_traffic_and_round_trips_appear_in_energy_and_time(cost_file, costs_raw, tmp_path):
    sc = _sc(users=3, weights=(1.0, 1.0, 0.0))
    r = solve(sc, load_costs(cost_file))
    assert r.terms["energy_downlink_j"] > 0 and r.terms["energy_receive_j"] > 0
    a = r.allocation
    trips = np.array(a["refresh_round_trips"])
    assert np.allclose(a["time_latency_s"], trips * sc.round_trip_latency_s)
    assert np.all(np.array(a["time_download_s"]) > 0)
    for e in costs_raw["param_sets"].values():
        e["per_example"]["bytes_down"] *= 3
    p = tmp_path / "d.json"
    p.write_text(json.dumps(costs_raw))
    r3 = solve(sc, load_costs(p))
    assert r3.terms["energy_downlink_j"] > r.terms["energy_downlink_j"]
    assert r3.terms["energy_receive_j"] > r.terms["energy_receive_j"]


def test_candidate_labels_match_the_he_standard_table():
    got = [(c.name, c.log_q, c.security_bits) for c in default_candidates()]
    assert got == [
        ("N8192-d2", 200, 128),
        ("N8192-[45,40,40,40,45]", 210, 128),
        ("N16384-d4", 280, 192),
        ("N16384-d7", 400, 128),
        ("N32768-d8", 440, 256),
        ("N32768-d12", 600, 192),
    ]
    for c in default_candidates():
        assert c.security_bits == security_level(c.n, sum(c.coeff_modulus_bits))
        table = HE_STANDARD_MAX_LOGQ[c.n]
        assert c.log_q <= table[c.security_bits]
        higher = [b for b in table if b > c.security_bits]
        assert all(c.log_q > table[b] for b in higher)  # the label is the highest the chain meets
    # deeper chain at one N: never a higher label, fewer refresh round trips
    for n in (16384, 32768):
        cs = sorted((c for c in default_candidates() if c.n == n), key=lambda c: c.depth)
        assert cs[1].security_bits < cs[0].security_bits
        r = [refresh_round_trips(ENGINE_WORKLOAD.step_levels, c.usable_levels) for c in cs]
        assert r[1] < r[0]


def test_insecure_or_useless_chains_are_refused():
    with pytest.raises(ScenarioError, match="128-bit limit"):
        Candidate(8192, (60, 40, 40, 40, 60))  # 240 bits > 218
    with pytest.raises(ScenarioError, match="no level"):
        Candidate(8192, (60, 40, 60))  # depth 1: the refresh level is the top
    with pytest.raises(ScenarioError, match="N<ring dim>"):
        Candidate.from_spec("16384-4")


def test_derived_chain_scales_round_trips_and_says_ours(cost_file):
    src = load_costs(cost_file)
    by = {s.candidate.name: s for s in src.resolve(default_candidates()).steps}
    d4, d7 = by["N16384-d4"], by["N16384-d7"]
    # measured 7 trips at 3 usable levels -> <= 24 levels -> 6 usable levels need 3 trips
    assert d7.refresh_round_trips == 3
    assert d7.bytes_down < d4.bytes_down and d7.key_upload_bytes > d4.key_upload_bytes
    assert d7.server_cpu_s > d4.server_cpu_s  # more primes per ciphertext
    assert "ours" in d7.source


def test_named_candidate_at_an_unmeasured_n_is_refused(cost_file, costs_raw, tmp_path):
    """The scenario names its candidates: one that cannot be priced is an error, not a silent drop."""
    del costs_raw["param_sets"]["N16384"]
    p = tmp_path / "c.json"
    p.write_text(json.dumps(costs_raw))
    with pytest.raises(
        ScenarioError, match="N16384-d4: no PrivTuner measurement at N=16384.*not derived across N"
    ):
        solve(_sc(), load_costs(p))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r.pop("provenance"), "provenance"),
        (lambda r: r.__setitem__("version", 2), "version"),
        (lambda r: r.__setitem__("kind", "something.else"), "unknown cost file kind"),
        (lambda r: r["provenance"]["machine"].pop("cpu_hz"), "--cpu-hz"),
        (lambda r: r["param_sets"]["N8192"]["per_example"].pop("bytes_up"), "bytes_up"),
        (lambda r: r["param_sets"]["N8192"].pop("per_example"), "per_example"),
        (
            lambda r: r["param_sets"]["N16384"]["per_example"].__setitem__("server_cpu_s", -1.0),
            "server_cpu_s",
        ),
        (
            lambda r: r["param_sets"]["N16384"]["per_example"].__setitem__("device_cpu_s", float("nan")),
            "device",
        ),
        (lambda r: r["param_sets"]["N32768"].__setitem__("security_bits", 128), "HE-standard label"),
        (lambda r: r["param_sets"]["N32768"].__setitem__("log_q", 400), "log_q"),
        (lambda r: r["param_sets"]["N8192"].__setitem__("coeff_modulus_bits", [60, 60, 60, 60]), "128-bit"),
        (lambda r: r["param_sets"]["N8192"].pop("key_upload_bytes"), "key_upload_bytes"),
        (lambda r: r.__setitem__("param_sets", {}), "param_sets"),
    ],
)
def test_malformed_step_files_give_clear_errors(mutate, needle, costs_raw):
    mutate(costs_raw)
    with pytest.raises(CostFileError, match=needle):
        parse_costs(costs_raw, "x.json")


def test_cpu_hz_can_be_given_when_the_file_lacks_it(costs_raw):
    costs_raw["provenance"]["machine"].pop("cpu_hz")
    src = parse_costs(costs_raw, "x.json", cpu_hz=2.0e9)
    assert src.resolve([Candidate.from_spec("N8192-d2")]).arrays()["device_cycles"][0] == pytest.approx(1.2e9)


def test_malformed_engine_files_give_clear_errors(engine_raw):
    del engine_raw["N8192"]["encrypt_cpu_s"]
    with pytest.raises(CostFileError, match="encrypt_cpu_s"):
        parse_costs(engine_raw, "e.json")
    with pytest.raises(CostFileError, match="no parameter sets"):
        parse_costs({"provenance": engine_raw["provenance"]}, "e.json")


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(CostFileError, match="does not exist"):
        load_costs(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CostFileError, match="not valid JSON"):
        load_costs(bad)


def test_provenance_is_carried_into_results(cost_file, costs_raw):
    res = solve(_sc(), load_costs(cost_file))
    assert res.costs["provenance"]["command"] == costs_raw["provenance"]["command"]
    assert res.costs["path"] == str(cost_file) and res.costs["kind"] == "privtuner_step"
    assert res.costs["cycles_from"].startswith("CPU time")
    json.dumps(res.to_json_dict())  # serialisable


def test_packaged_cost_file_is_the_engine_file_with_cpu_times():
    """The packaged file must exist (no skip) and its README must say which file it is."""
    p = default_cost_path()
    assert p.is_file(), f"packaged cost file missing: {p}"
    src = load_costs()
    assert src.kind == "engine" and src.cpu_hz > 0
    tab = src.resolve(default_candidates())
    assert all("engine file's CPU times" in s.source for s in tab.steps)
    readme = (p.parent / "README.md").read_text()
    assert "fhe_costs.json" in readme and "CPU" in readme and "--costs" in readme
