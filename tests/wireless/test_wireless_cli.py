"""`p3eft wireless run` and `p3eft wireless figures` through the real CLI entry point."""

from __future__ import annotations

import json
import math

import numpy as np

from p3eft.cli.main import main
from p3eft.wireless import generate_scenario

FOUR = ["N8192-d2", "N16384-d4", "N16384-d7", "N32768-d8"]


def test_run_scenario_check_exhaustive_writes_gap(cost_file, tmp_path, capsys):
    sc_in = tmp_path / "in.yaml"
    generate_scenario(4, seed=1, candidates=FOUR).save(sc_in)
    out = tmp_path / "r.json"
    sc_out = tmp_path / "sc.yaml"
    rc = main(
        [
            "wireless",
            "run",
            "--scenario",
            str(sc_in),
            "--w3",
            "0.01",
            "--costs",
            str(cost_file),
            "--check-exhaustive",
            "--baselines",
            "--save-scenario",
            str(sc_out),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    assert abs(d["gap_to_exhaustive"]) < 1e-7
    assert d["violations"] == []
    assert d["result"]["costs"]["path"] == str(cost_file)
    assert set(d["baselines"]) == {"equal_bandwidth", "max_power", "smallest_n", "largest_n", "random"}
    assert "gap_to_exhaustive" in capsys.readouterr().out
    # the saved scenario reproduces the same result
    out2 = tmp_path / "r2.json"
    assert (
        main(["wireless", "run", "--scenario", str(sc_out), "--costs", str(cost_file), "--json", str(out2)])
        == 0
    )
    assert json.loads(out2.read_text())["result"]["fun"] == d["result"]["fun"]


def test_hundred_users_out_of_the_box_and_resource_flags(cost_file, tmp_path):
    out = tmp_path / "r.json"
    assert main(["wireless", "run", "--users", "100", "--costs", str(cost_file), "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert (
        d["violations"] == [] and d["scenario"]["bandwidth_hz"] == 2e8 and d["scenario"]["server_hz"] == 1e11
    )
    out = tmp_path / "r3.json"
    args = ["wireless", "run", "--users", "3", "--bandwidth-mhz", "30", "--server-ghz", "5"]
    assert main([*args, "--costs", str(cost_file), "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["scenario"]["bandwidth_hz"] == 30e6 and d["scenario"]["server_hz"] == 5e9
    assert sum(d["result"]["allocation"]["bandwidth_hz"]) <= 30e6 * (1 + 1e-6)


def test_check_exhaustive_above_its_limit_is_refused_before_solving(cost_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(
        [
            "wireless",
            "run",
            "--users",
            "7",
            "--costs",
            str(cost_file),
            "--check-exhaustive",
            "--json",
            str(out),
        ]
    )
    assert rc == 2
    cap = capsys.readouterr()
    assert "--check-exhaustive would enumerate 279936 choices" in cap.err and cap.err.count("\n") == 1
    assert "proposed:" not in cap.out and not out.exists()  # nothing was solved or written


def test_run_user_errors_are_one_line(cost_file, tmp_path, capsys):
    assert main(["wireless", "run", "--costs", str(cost_file)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["wireless", "run", "--users", "3", "--costs", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["wireless", "run", "--users", "3", "--bandwidth-mhz", "nan", "--costs", str(cost_file)]) == 2
    assert "--bandwidth-mhz must be a positive number" in capsys.readouterr().err
    sc = generate_scenario(3, seed=0)
    p = tmp_path / "s.json"
    d = sc.to_dict()
    d["weights"] = [1.0, math.nan, 0.01]
    p.write_text(json.dumps(d))
    assert main(["wireless", "run", "--scenario", str(p), "--costs", str(cost_file)]) == 2
    err = capsys.readouterr().err
    assert "weights must be finite" in err and err.count("\n") == 1
    d = sc.to_dict()
    d["server_products"] = 0.0
    p.write_text(json.dumps(d))
    assert main(["wireless", "run", "--scenario", str(p), "--costs", str(cost_file)]) == 2
    assert "server_products" in capsys.readouterr().err
    floors = list(sc.privacy_floor_bits)
    floors[0] = 512.0
    sc.with_(privacy_floor_bits=floors).save(p)
    assert main(["wireless", "run", "--scenario", str(p), "--costs", str(cost_file)]) == 2
    err = capsys.readouterr().err
    assert "privacy floor" in err and "[0]" in err and err.count("\n") == 1


def _series(d, method, key):
    return np.array([np.nan if v is None else v for v in d["methods"][method][key]], dtype=float)


def test_figures_quick_default_to_a_run_folder_and_show_the_trends(cost_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["wireless", "figures", "--costs", str(cost_file), "--quick", "--users", "3"]) == 0
    out = tmp_path / "runs" / "wireless-figures"  # never docs/results/wireless by default
    data = {}
    for n in (
        "energy_vs_privacy_weight",
        "privacy_vs_privacy_weight",
        "energy_vs_users",
        "energy_vs_bandwidth",
        "energy_vs_max_power",
    ):
        assert (out / f"{n}.png").is_file() and (out / f"{n}.command.txt").is_file()
        data[n] = d = json.loads((out / f"{n}.json").read_text())
        assert "wireless figures" in d["command"] and "fixed:" in d["fixed_text"]
        # the proposed method is never beaten: every baseline's objective gap is >= 0
        for m, rec in d["methods"].items():
            for gap, obj in zip(rec["objective_gap_j"], rec["objective"], strict=True):
                assert gap is None or gap >= -1e-9 * max(1.0, abs(obj)), (n, m, gap)
    w = data["privacy_vs_privacy_weight"]
    assert w["x"] == sorted(w["x"])
    priv = _series(w, "proposed", "privacy_mean_bits")
    energy = _series(data["energy_vs_privacy_weight"], "proposed", "energy_total_j")
    assert np.all(np.diff(priv) >= -1e-9) and priv[-1] > priv[0]  # a higher w3 buys privacy ...
    assert np.all(np.diff(energy) >= -1e-9 * energy[0])  # ... with energy
    for n in ("energy_vs_bandwidth", "energy_vs_max_power"):  # more resources never hurt
        obj = _series(data[n], "proposed", "objective")
        ok = ~np.isnan(obj)
        assert np.all(np.diff(obj[ok]) <= 1e-9 * np.abs(obj[ok]).max()), n
    pw = data["energy_vs_max_power"]
    assert pw["x"][0] <= 0.001 and pw["fixed"]["p_max_W"] == "varied"
    assert pw["fixed"]["users"] == 3 and pw["fixed"]["B_MHz"] == 6.0 and pw["fixed"]["F_s_GHz"] == 3.0
    assert data["energy_vs_users"]["fixed"]["B_MHz"] == 6.0  # users compete for the same B


def test_deadline_range_flag_draws_generated_deadlines_from_it(cost_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["wireless", "run", "--users", "3", "--costs", str(cost_file), "--json", str(out)]
    assert main([*args, "--deadline-s", "7200,14400"]) == 0
    d = json.loads(out.read_text())
    assert all(7200 <= t <= 14400 for t in d["scenario"]["deadlines_s"])
    assert "--deadline-s 7200,14400" in d["command"]
    assert main([*args]) == 0  # negative control: the generator's own range
    assert all(t <= 300 for t in json.loads(out.read_text())["scenario"]["deadlines_s"])
    for bad in ("7200", "5,1", "0,10", "a,b"):
        capsys.readouterr()
        assert main([*args, "--deadline-s", bad]) == 2
        assert "--deadline-s" in capsys.readouterr().err
    sc = tmp_path / "s.json"
    generate_scenario(2, seed=0).save(sc)
    assert main(["wireless", "run", "--scenario", str(sc), "--deadline-s", "1,2"]) == 2


def test_w3_grid_flag_sets_the_privacy_sweep_and_refuses_bad_grids(capsys):
    from p3eft.wireless.experiments import DEFAULT_W3, default_sweeps

    (w3,) = [s for s in default_sweeps(users=3, w3_values=[0.0, 2.0, 8.0]) if s.name.endswith("weight")]
    assert list(w3.values) == [0.0, 2.0, 8.0] and w3.make(8.0).weights[2] == 8.0
    (dflt,) = [s for s in default_sweeps(users=3) if s.name.endswith("weight")]
    assert list(dflt.values) == list(DEFAULT_W3)
    for bad in ("1", "2,1", "0,-1", "0,x", "0,inf"):
        capsys.readouterr()
        assert main(["wireless", "figures", "--quick", "--w3-grid", bad]) == 2
        assert "--w3-grid" in capsys.readouterr().err
