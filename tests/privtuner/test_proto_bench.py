"""The step-cost file: its format (the wireless optimiser's contract) and that it counts what happened."""

from __future__ import annotations

import json

from p3eft.privtuner.bench import COST_KEYS, KIND, BenchCase, step_cost_file, table


def test_step_cost_file_counts_one_step(toy):
    case = BenchCase("toy-N16384", toy.ToyBackend(), toy.ToyCodec)
    costs = step_cost_file(
        [case],
        {"name": "toy", "layers": 0, "max_len": 0, "hidden": 8, "lora_rank": 0},
        [("good movie", 1)],
        repeats=1,
        command="test",
    )
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
    assert "toy-N16384" in table(costs)
