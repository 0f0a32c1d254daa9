"""Cost files that lack a ring dimension, and several PrivTuner files combined.

* default candidates at an N the PrivTuner file did not measure are excluded with a one-line reason
  that reaches the result JSON (never derived across N, never dropped silently); a scenario that names
  such a candidate gets an error;
* the N = 8192 reason is a fact of the engine: PrivTuner's exp phase does not fit a 128-bit N = 8192
  chain (real LevelError), while a shallower phase runs on the same keys (positive control);
* ``load_costs([a, b])`` keeps each file's provenance and clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from p3eft.cli.main import app
from p3eft.fhe import nonlinear
from p3eft.fhe.context import LevelError, keygen
from p3eft.fhe.params import ParamSet
from p3eft.fhe.refresh import LocalRefresher
from p3eft.fhe.tensor import encrypt
from p3eft.wireless import CostFileError, ScenarioError, generate_scenario, load_costs, solve
from p3eft.wireless.availability import max_usable_levels, privtuner_phase_levels, unmeasured_n
from p3eft.wireless.candidates import Candidate


def _write(tmp_path, raw, name):
    p = tmp_path / name
    p.write_text(json.dumps(raw))
    return p


def _without(costs_raw, tmp_path, *sets):
    for s in sets:
        del costs_raw["param_sets"][s]
        if s == "N8192":  # the fixture's second N=8192 chain
            del costs_raw["param_sets"]["N8192b"]
    return _write(tmp_path, costs_raw, "partial.json")


def test_default_candidates_at_an_unmeasured_n_are_excluded_with_the_reason(costs_raw, tmp_path):
    p = _without(costs_raw, tmp_path, "N8192")
    sc = generate_scenario(3, seed=0)
    assert sc.uses_default_candidates
    res = solve(sc, load_costs(p))
    excl = res.costs["excluded"]
    assert [x["candidate"] for x in excl] == ["N8192-d2", "N8192-[45,40,40,40,45]"]
    assert all(x["reason"].startswith("PrivTuner cannot run at N=8192") for x in excl)
    assert all(n != 8192 for n in res.allocation["N"])
    assert len(res.costs["candidates"]) == 4  # the rest are priced (measured or derived within N)


def test_an_unmeasured_n_where_privtuner_can_run_says_just_that(costs_raw, tmp_path):
    p = _without(costs_raw, tmp_path, "N32768")
    tab = load_costs(p).for_scenario(generate_scenario(2, seed=0))
    assert {x.candidate.name for x in tab.excluded} == {"N32768-d8", "N32768-d12"}
    assert "no PrivTuner measurement at N=32768" in tab.exclusion_note()
    assert "not derived across N" in tab.exclusion_note()


def test_an_unmeasured_chain_too_shallow_for_privtuner_is_excluded_not_derived(costs_raw, tmp_path):
    p = _without(costs_raw, tmp_path, "N16384")  # N=16384 now only via a measured d7 entry
    d7 = Candidate.from_spec("N16384-d7")
    costs_raw = json.loads(p.read_text())
    costs_raw["param_sets"]["D7"] = costs_raw["param_sets"]["N32768"] | {
        "poly_modulus_degree": 16384,
        "coeff_modulus_bits": list(d7.coeff_modulus_bits),
        "log_q": d7.log_q,
        "security_bits": d7.security_bits,
    }
    src = load_costs(_write(tmp_path, costs_raw, "d7.json"))
    tab = src.for_scenario(generate_scenario(2, seed=0))
    (x,) = [x for x in tab.excluded if x.candidate.n == 16384]
    assert x.candidate.name == "N16384-d4" and x.candidate.usable_levels == 3
    assert "PrivTuner cannot run on N16384-d4" in x.reason and "has 3" in x.reason
    assert "N16384-d7" in tab.names  # measured: used
    with pytest.raises(ScenarioError, match="cannot run on N16384-d4"):
        src.resolve([Candidate.from_spec("N16384-d4")])


def test_a_named_candidate_that_cannot_be_priced_is_an_error(costs_raw, tmp_path):
    p = _without(costs_raw, tmp_path, "N8192")
    sc = generate_scenario(2, seed=0, candidates=["N8192-d2", "N16384-d4"])
    assert not sc.uses_default_candidates
    with pytest.raises(ScenarioError, match="N8192-d2: PrivTuner cannot run at N=8192"):
        solve(sc, load_costs(p))


def test_nothing_left_to_price_is_an_error(costs_raw, tmp_path):
    src = load_costs(_without(costs_raw, tmp_path, "N8192", "N16384"))
    with pytest.raises(ScenarioError, match="no candidate can be priced.*cannot run at N=8192"):
        src.resolve([Candidate.from_spec("N8192-d2")], strict=False)


def test_the_reason_follows_the_he_standard_limit():
    need = privtuner_phase_levels()
    assert need == nonlinear.poly_depth(6) == 4  # softmax's exp: one degree-6 phase
    got, chain = max_usable_levels(8192, 40)
    assert got < need and chain is not None and chain.security_bits >= 128
    assert max_usable_levels(16384, 40)[0] >= need and max_usable_levels(32768, 40)[0] >= need
    assert not unmeasured_n(8192, 40, [16384]).runnable
    assert unmeasured_n(16384, 40, [32768]).runnable


def test_privtuner_exp_phase_does_not_fit_a_128_bit_n8192_chain():
    """The engine refuses what the reason states; a 2-level phase on the same keys runs (control)."""
    ps = ParamSet("N8192-max", 8192, (50, 40, 40, 40, 48))  # 218 bits: the 128-bit limit
    assert ps.check_secure() == 128
    ctx, sk = keygen(ps)
    ref = LocalRefresher(ctx, sk, 64.0, 30)  # PrivTuner's default refresh bound and lambda
    assert ref.min_level == 1 and ctx.top_level == 3  # 2 usable levels
    x = np.linspace(-2.0, 0.0, 16)
    exp = nonlinear.exp(-4.0, 0.0, squarings=1, degree=6)
    with pytest.raises(LevelError, match="a phase needs 4 levels"):
        exp.encrypted(ctx, encrypt(ctx, x), ref)
    sq = nonlinear.polynomial("square", np.square, -2.0, 2.0, 2)  # depth 2: fits
    y = sk.decrypt_slots(ctx, sq.encrypted(ctx, encrypt(ctx, x), ref))[: x.size]
    assert np.max(np.abs(y - x**2)) < 1e-3


def _split(costs_raw, tmp_path, hz2=2.0e9, model2=None):
    a = json.loads(json.dumps(costs_raw))
    b = json.loads(json.dumps(costs_raw))
    a["param_sets"] = {k: v for k, v in a["param_sets"].items() if k != "N32768"}
    b["param_sets"] = {"N32768": b["param_sets"]["N32768"]}
    b["provenance"]["machine"]["cpu_hz"] = hz2
    b["provenance"]["date"] = "2026-02-02"
    if model2 is not None:
        b["model"] = model2
    return _write(tmp_path, a, "a.json"), _write(tmp_path, b, "b.json")


def test_several_step_files_combine_with_their_own_provenance_and_clock(costs_raw, tmp_path):
    pa, pb = _split(costs_raw, tmp_path)
    src = load_costs([pa, pb])
    files = src.provenance["files"]
    assert [f["path"] for f in files] == [str(pa), str(pb)]
    assert [f["provenance"]["date"] for f in files] == ["2026-01-01", "2026-02-02"]
    assert files[1]["param_sets"] == ["N32768"]
    tab = src.resolve([Candidate.from_spec(c) for c in ("N8192-d2", "N32768-d8", "N32768-d12")])
    cyc = tab.arrays()["device_cycles"]
    assert cyc[0] == pytest.approx(0.6 * 3.0e9) and cyc[1] == pytest.approx(0.45 * 2.0e9)
    assert tab.steps[2].cpu_hz == 2.0e9 and str(pb) in tab.steps[2].source  # derived from b's entry
    one = load_costs(pa).resolve([Candidate.from_spec("N8192-d2")]).arrays()["device_cycles"]
    assert one[0] == pytest.approx(cyc[0])


def test_combining_refuses_mixed_shapes_duplicates_and_engine_files(costs_raw, tmp_path, engine_cost_file):
    pa, pb = _split(costs_raw, tmp_path, model2={"name": "tiny", "layers": 4})
    with pytest.raises(CostFileError, match="different shapes"):
        load_costs([pa, pb])
    with pytest.raises(CostFileError, match="measured in both"):
        load_costs([pa, pa])
    with pytest.raises(CostFileError, match="engine file"):
        load_costs([pa, engine_cost_file])


def test_cli_takes_several_cost_files_and_prints_the_exclusion(costs_raw, tmp_path):
    del costs_raw["param_sets"]["N8192"], costs_raw["param_sets"]["N8192b"]
    pa, pb = _split(costs_raw, tmp_path)
    out = tmp_path / "r.json"
    args = ["wireless", "run", "--users", "2", "--costs", str(pa), "--costs", str(pb), "--json", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "note: excluded N8192-d2, N8192-[45,40,40,40,45]: PrivTuner cannot run at N=8192" in r.output
    got = json.loads(out.read_text())
    assert f"--costs {pa} --costs {pb}" in got["command"]
    assert len(got["result"]["costs"]["provenance"]["files"]) == 2


def test_the_published_bench_files_combine_and_price_the_runnable_defaults():
    """The two bench files behind docs/results/wireless load together, each with its own provenance."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "privtuner"
    files = [root / "step_costs_bert_tiny.json", root / "step_costs_bert_tiny_pt32768_d5.json"]
    src = load_costs(files)
    assert {n for n, _ in src.entries} == {16384, 32768}
    assert [f["provenance"]["date"][:10] for f in src.provenance["files"]] == ["2026-11-29", "2026-11-30"]
    tab = src.for_scenario(generate_scenario(2, seed=0))
    assert tab.names == ["N16384-d7", "N32768-d8", "N32768-d12"]
    assert {x.candidate.name for x in tab.excluded} == {"N8192-d2", "N8192-[45,40,40,40,45]", "N16384-d4"}
    assert all(s.source.startswith("derived (ours)") and s.cpu_hz > 0 for s in tab.steps)
