"""`p3eft obfuscatune` commands end to end on a tiny local GPT-2 folder (real GPT-2 tokenizer)."""

import json
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

from p3eft.cli.main import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A GPT-2 folder small enough for CI, with the full GPT-2 vocabulary so real text tokenises."""
    d = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    from p3eft.models.sources import gpt2_tokenizer_dir

    transformers.GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir()).save_pretrained(d)
    return d


def test_info_gpt2_xl_share_from_split(tmp_path, capsys):
    out = tmp_path / "info.json"
    assert main(["obfuscatune", "info", "--model", "gpt2-xl", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["total_parameters"] == 1_557_611_200
    assert res["enclave_param_share"] == pytest.approx(0.0533, abs=1e-4)
    assert res["arithmetic"]["lm_head_share"] < 0.1
    assert "5.3%" in capsys.readouterr().out


def test_info_structured_masks_meet_the_masking_goal(tmp_path):
    out = tmp_path / "info.json"
    assert main(["obfuscatune", "info", "--model", "gpt2", "--masks", "kron", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["enclave_param_share"] == pytest.approx(0.317, abs=1e-3)
    assert res["arithmetic"]["masking_vs_accelerator"] <= 0.10
    assert 0.25 < res["arithmetic"]["lm_head_share"] < 0.35


@pytest.mark.parametrize(
    "argv",
    [["info", "--masks", "diagonal"], ["info", "--mode", "loose"], ["verify", "--model", "no-such-model"]],
)
def test_bad_input_is_one_line_error(argv, capsys):
    assert main(["obfuscatune", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("p3eft: error:") and len(err.splitlines()) == 1


def test_verify_on_local_model(tiny_dir, tmp_path):
    out = tmp_path / "verify.json"
    assert main(["obfuscatune", "verify", "--model", str(tiny_dir), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["max_abs_logit_diff"] <= 1e-3
    assert res["naive_max_abs_logit_diff"] >= 10 * res["max_abs_logit_diff"]
    assert res["weights_random"] is False  # a local folder counts as real weights
    assert 0 < res["enclave_param_share"] < 1 and res["untrusted_param_share"] == pytest.approx(
        1 - res["enclave_param_share"]
    )


def test_finetune_resume_evaluate_export(tiny_dir, tmp_path):
    run = tmp_path / "run"
    common = [
        "--model",
        str(tiny_dir),
        "--dataset",
        "obqa",
        "--limit",
        "16",
        "--batch-size",
        "4",
        "--max-len",
        "64",
        "--masks",
        "kron",
        "--lr",
        "1e-2",
        "--no-progress",
    ]
    assert main(["obfuscatune", "finetune", "--out", str(run), "--max-steps", "2", *common]) == 0
    assert (
        main(["obfuscatune", "finetune", "--out", str(run), "--max-steps", "2", *common]) == 2
    )  # no clobber
    assert main(["obfuscatune", "finetune", "--out", str(run), "--max-steps", "3", "--resume", *common]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["result"]["resumed_from"] == 2 and len(res["result"]["losses"]) == 1
    assert (run / "adapter" / "adapter_config.json").is_file()

    ev = tmp_path / "eval.json"
    assert (
        main(
            [
                "obfuscatune",
                "evaluate",
                "--model",
                str(tiny_dir),
                "--dataset",
                "obqa",
                "--limit",
                "4",
                "--adapter",
                str(run / "adapter"),
                "--masks",
                "kron",
                "--json",
                str(ev),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(ev.read_text())["n"] == 4

    again = tmp_path / "again"
    assert main(["obfuscatune", "export", "--from", str(run), "--out", str(again)]) == 0
    a, b = (
        load_file(str(run / "adapter" / "adapter_model.safetensors")),
        load_file(str(again / "adapter_model.safetensors")),
    )
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_remote_enclave_without_runtime_is_clear(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "p3eft.runtime.connect", None)  # as if the runtime were not built
    assert (
        main(
            [
                "obfuscatune",
                "evaluate",
                "--model",
                str(tiny_dir),
                "--dataset",
                "obqa",
                "--limit",
                "2",
                "--enclave",
                "https://127.0.0.1:1",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "networked runtime" in capsys.readouterr().err


def test_experiment_smoke(tiny_dir, tmp_path):
    out = tmp_path / "exp"
    assert (
        main(
            [
                "obfuscatune",
                "experiment",
                "--models",
                str(tiny_dir),
                "--datasets",
                "obqa",
                "--limit",
                "8",
                "--eval-limit",
                "4",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--kappas",
                "1,100",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    rec = res["records"][0]
    assert set(rec["table1"]) == {"unprotected", "obfuscatune", "naive"}
    assert set(rec["table2"]) == {"cond:1", "cond:100", "naive"}
    assert rec["table2"]["cond:1"]["max_abs_logit_diff"] < rec["table2"]["naive"]["max_abs_logit_diff"]
    assert (out / "obfuscatune.png").stat().st_size > 10_000 and "Table 1" in (out / "tables.md").read_text()
