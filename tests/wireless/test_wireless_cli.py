"""`p3eft wireless run` and `p3eft wireless figures` through the real CLI entry point."""

from __future__ import annotations

import json

from p3eft.cli.main import main
from p3eft.wireless import generate_scenario


def test_run_users_check_exhaustive_writes_gap(cost_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    sc_out = tmp_path / "sc.yaml"
    rc = main(
        [
            "wireless",
            "run",
            "--users",
            "4",
            "--seed",
            "1",
            "--w3",
            "0.005",
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


def test_run_user_errors_are_one_line(cost_file, tmp_path, capsys):
    assert main(["wireless", "run", "--costs", str(cost_file)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["wireless", "run", "--users", "3", "--costs", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    sc = generate_scenario(3, seed=0)
    floors = list(sc.privacy_floor_bits)
    floors[0] = 512.0
    p = tmp_path / "s.json"
    sc.with_(privacy_floor_bits=floors).save(p)
    assert main(["wireless", "run", "--scenario", str(p), "--costs", str(cost_file)]) == 2
    err = capsys.readouterr().err
    assert "privacy floor" in err and "[0]" in err and err.count("\n") == 1


def test_figures_quick(cost_file, tmp_path):
    out = tmp_path / "figs"
    assert (
        main(["wireless", "figures", "--out", str(out), "--costs", str(cost_file), "--quick", "--users", "3"])
        == 0
    )
    names = {
        "energy_vs_privacy_weight",
        "privacy_vs_privacy_weight",
        "energy_vs_users",
        "energy_vs_bandwidth",
        "energy_vs_max_power",
    }
    for n in names:
        assert (out / f"{n}.png").stat().st_size > 10_000
        d = json.loads((out / f"{n}.json").read_text())
        assert "wireless figures" in d["command"] and (out / f"{n}.command.txt").is_file()
        assert set(d["methods"]) == {
            "proposed",
            "equal_bandwidth",
            "max_power",
            "smallest_n",
            "largest_n",
            "random",
        }
