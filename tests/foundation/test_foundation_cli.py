"""CLI: bad input ends with one clear line on stderr and a non-zero exit; the happy paths write JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from p3eft.cli.main import main


def _one_line_error(capsys, argv: list[str], needle: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("training", "scoring"))]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("p3eft: error:"), err
    assert "Traceback" not in err and needle in lines[0], err
    return lines[0]


@pytest.fixture
def corrupt_adapter(tmp_path):
    d = tmp_path / "bad-adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    (d / "adapter_model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    return d


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["evaluate", "--model", "gpt5", "--limit", "2"], "unknown model 'gpt5'"),
        (["evaluate", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["evaluate", "--limit", "0"], "'--limit'"),
        (["finetune", "--limit", "0", "--out", "OUT"], "'--limit'"),
        (["evaluate", "--data-dir", "/nonexistent/data", "--limit", "2"], "does not exist"),
        (["finetune", "--scheme", "obfuscatune", "--out", "OUT"], "p3eft obfuscatune finetune"),
        (["finetune", "--scheme", "magic", "--out", "OUT"], "unknown scheme"),
        (["finetune", "--max-steps", "0", "--out", "OUT"], "'--max-steps'"),
        (["finetune", "--dropout", "1.5", "--out", "OUT"], "'--dropout': 1.5 is not in the range 0<=x<1"),
        (["models", "info", "gpt5"], "unknown model"),
    ],
)
def test_bad_input_one_line(capsys, tmp_path, argv, needle):
    _one_line_error(capsys, [a.replace("OUT", str(tmp_path / "o")) for a in argv], needle)


def test_missing_data_dir_env(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("P3EFT_DATA", str(tmp_path / "gone"))
    _one_line_error(capsys, ["evaluate", "--model", "bert-tiny", "--dataset", "sst2"], "P3EFT_DATA")


def test_corrupt_and_missing_adapter(capsys, corrupt_adapter, tmp_path):
    base = ["evaluate", "--model", "bert-tiny", "--dataset", "sst2", "--limit", "4", "--adapter"]
    _one_line_error(capsys, [*base, str(corrupt_adapter)], "corrupt adapter")
    (corrupt_adapter / "adapter_config.json").write_text("{not json")
    _one_line_error(capsys, [*base, str(corrupt_adapter)], "not valid JSON")
    _one_line_error(capsys, [*base, str(tmp_path / "nowhere")], "does not exist")


def test_subprocess_bad_input_has_no_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "p3eft.cli.main", "evaluate", "--model", "smollm2-135m", "--dataset", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "Traceback" not in out.stderr
    assert "unknown dataset 'nope'" in out.stderr


def test_models_list_shows_registry(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "minilm-l6", "gpt2", "bert-tiny"):
        assert name in out
    assert "134,515,008" in out and "1,557,611,200" in out
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (
        rows["smollm2-135m"]["real_weights_here"] is True and rows["smollm2-135m"]["architecture"] == "Llama"
    )
    assert rows["gpt2"]["real_weights_here"] is False and rows["bert-tiny"]["parameters"] == 4_385_920


def test_cli_finetune_resume_and_evaluate_tiny(capsys, tiny_gpt2_dir, tmp_path):
    out = tmp_path / "run"
    common = [
        "finetune",
        "--model",
        str(tiny_gpt2_dir),
        "--dataset",
        "obqa",
        "--limit",
        "6",
        "--batch-size",
        "2",
    ]
    common += ["--max-len", "48", "--out", str(out), "--no-progress", "--checkpoint-every", "2"]
    assert main([*common, "--max-steps", "2"]) == 0
    assert "adapter:" in capsys.readouterr().out
    assert main([*common, "--max-steps", "4", "--resume"]) == 0  # extend the finished run by two steps
    res = json.loads((out / "results.json").read_text())
    assert (
        res["result"]["resumed_from"] == 2
        and res["result"]["steps"] == 4
        and len(res["result"]["losses"]) == 4
    )
    capsys.readouterr()
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(tiny_gpt2_dir), "--dataset", "obqa", "--limit", "3"]
    assert main([*argv, "--adapter", str(out / "adapter"), "--json", str(report), "--no-progress"]) == 0
    data = json.loads(report.read_text())
    assert data["n"] == 3 and 0 <= data["acc"] <= 1 and data["adapter"] == str(out / "adapter")


@pytest.mark.slow
def test_cli_evaluate_smollm2_piqa_limit_40(tmp_path):
    report = tmp_path / "F.json"
    out = subprocess.run(
        [sys.executable, "-m", "p3eft.cli.main", "evaluate", "--model", "smollm2-135m", "--dataset", "piqa"]
        + ["--limit", "40", "--json", str(report)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(report.read_text())
    assert data["n"] == 40 and data["weights_random"] is False
    assert 0.0 <= data["acc"] <= 1.0 and 0.0 <= data["acc_norm"] <= 1.0
    assert any("validation" in n for n in data["notes"])
    assert "scoring" in out.stderr  # progress bar


@pytest.mark.slow
def test_minilm_sst2_evaluates(capsys):
    assert (
        main(["evaluate", "--model", "minilm-l6", "--dataset", "sst2", "--limit", "16", "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert "sst2 eval (n=16, metric accuracy)" in out and "real weights" in out


def test_cli_sst2_classifier_finetune_and_evaluate(capsys, tmp_path):
    """The classification path (bert-tiny here for speed; minilm-l6 is the same code): head trained and reloaded."""
    out = tmp_path / "sst"
    argv = ["finetune", "--model", "bert-tiny", "--dataset", "sst2", "--limit", "16", "--max-steps", "2"]
    assert main([*argv, "--batch-size", "4", "--lr", "1e-2", "--out", str(out), "--no-progress"]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    report = tmp_path / "sst.json"
    argv = [
        "evaluate",
        "--model",
        "bert-tiny",
        "--dataset",
        "sst2",
        "--limit",
        "8",
        "--adapter",
        str(out / "adapter"),
    ]
    assert main([*argv, "--json", str(report), "--no-progress"]) == 0
    data = json.loads(report.read_text())
    assert data["n"] == 8 and 0 <= data["accuracy"] <= 1 and data["weights_random"] is True
    assert any("random weights" in n for n in data["notes"])
