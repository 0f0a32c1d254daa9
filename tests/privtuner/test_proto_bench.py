"""The step-cost file: its format (the wireless optimiser's contract) and that it counts what happened."""

from __future__ import annotations

import json

from p3eft.privtuner.bench import COST_KEYS, KIND, BenchCase, step_cost_file, table


def _toy_costs(toy, workers: int = 1) -> dict:
    case = BenchCase("toy-N16384", toy.ToyBackend(), toy.ToyCodec, workers)
    return step_cost_file(
        [case],
        {"name": "toy", "layers": 0, "max_len": 0, "hidden": 8, "lora_rank": 0},
        [("good movie", 1)],
        repeats=1,
        command="test",
    )


def test_step_cost_file_counts_one_step(toy):
    costs = _toy_costs(toy)
    json.dumps(costs)  # JSON-ready
    assert costs["kind"] == KIND and costs["version"] == 1
    ps = costs["param_sets"]["toy-N16384"]
    assert ps["poly_modulus_degree"] == 16384 and ps["security_bits"] >= 128
    step = ps["per_example"]
    assert set(COST_KEYS) <= set(step)
    # one example: forward refresh + update refresh; encrypt input, dL/dlogits and 2 refresh answers;
    # decrypt 2 refresh views and the logits
    assert step["refresh_round_trips"] == 2
    assert step["encryptions"] == 4 and step["decryptions"] == 3
    inf = ps["inference_per_example"]
    assert inf["refresh_round_trips"] == 1 and inf["encryptions"] == 2 and inf["decryptions"] == 2
    assert step["bytes_up"] > inf["bytes_up"] > 0 and step["server_cpu_s"] > 0 and step["device_cpu_s"] > 0
    assert ps["key_upload_bytes"] > 1e6 and ps["keygen_cpu_s"] > 0
    assert ps["process_peak_rss_bytes"] > ps["key_upload_bytes"]  # the keys were in this process
    assert ps["galois_keys"] == len(toy.ToyBackend.galois_steps) and ps["rotation_keys"] == "exact"
    assert "toy-N16384" in table(costs)


def test_the_step_cost_file_records_the_model_owners_workers(toy):
    """``--workers 2``: the file and its table say so, and the step is still counted (the toy model
    ignores the pool; the pool's products are tested in test_proto_pool.py)."""
    costs = _toy_costs(toy, workers=2)
    ps = costs["param_sets"]["toy-N16384"]
    assert ps["workers"] == 2 and ps["per_example"]["refresh_round_trips"] == 2
    row = next(line for line in table(costs).splitlines() if line.startswith("toy-N16384"))
    assert row.split()[1] == "2"


def test_the_bench_command_hands_its_rotation_key_policy_to_the_library(monkeypatch, tmp_path):
    from p3eft.cli.main import main
    from p3eft.privtuner import workflows

    seen = {}

    def fake_bench(**kw):
        seen.update(kw)
        return {"costs": {"kind": KIND}, "table": ""}

    monkeypatch.setattr(workflows, "bench", fake_bench)
    assert main(["privtuner", "bench", "--json", str(tmp_path / "c.json"), "--rotation-keys", "pow2"]) == 0
    assert seen["rotation_keys"] == "pow2"


def test_the_bench_skips_a_default_set_the_model_cannot_run_and_refuses_one_named(monkeypatch):
    """A parameter set too shallow for the model's approximations: skipped with its reason when the
    bench runs every set by default, a one-line error when the user names it."""
    import pytest

    from p3eft.errors import P3eftError
    from p3eft.privtuner import bench as bench_mod
    from p3eft.privtuner import wiring, workflows
    from p3eft.privtuner.config import PRIVTUNER_PARAM_SETS
    from p3eft.privtuner.encrypted import ChainTooShallowError

    class FakeBackend:
        def __init__(self, cfg, data_dir=None):
            if cfg.param_set == "PT32768-d5":
                raise ChainTooShallowError("PT32768-d5 cannot run this model: L0.gelu needs 5 levels")
            self.model = type("M", (), {"weights": type("W", (), {"hidden": 8})()})()

    ran = []

    def fake_costs(cases, info, examples, repeats, command, progress=None):
        ran.extend(c.name for c in cases)
        return {"kind": KIND, "param_sets": {c.name: {} for c in cases}}

    monkeypatch.setattr(wiring, "BertBackend", FakeBackend)
    monkeypatch.setattr(bench_mod, "step_cost_file", fake_costs)
    monkeypatch.setattr(bench_mod, "table", lambda costs: "")
    monkeypatch.setattr(workflows, "_sst2", lambda *a, **k: [("good", 1), ("bad", 0)])
    kw = dict(model="tiny", layers=1, max_len=4, rank=2, alpha=4.0, repeats=1, progress=False)
    costs = workflows.bench(param_sets=None, **kw)["costs"]
    assert ran == [n for n in PRIVTUNER_PARAM_SETS if n != "PT32768-d5"]
    assert "L0.gelu needs 5 levels" in costs["excluded_param_sets"]["PT32768-d5"]
    with pytest.raises(ChainTooShallowError):
        workflows.bench(param_sets=["PT16384", "PT32768-d5"], **kw)
    monkeypatch.setattr(workflows, "PRIVTUNER_PARAM_SETS", {"PT32768-d5": None})
    with pytest.raises(P3eftError, match="no parameter set can run tiny"):
        workflows.bench(param_sets=None, **kw)
