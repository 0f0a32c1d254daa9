"""The plain LoRA reference: loss goes down on real data, exact resume, PEFT export reloads in plain peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from p3eft.data import load_task
from p3eft.errors import P3eftError
from p3eft.models import load_causal_lm
from p3eft.tuning import (
    StepBatches,
    TrainConfig,
    attach_lora,
    build_lm_training_examples,
    collate_lm,
    finetune_plain,
    save_adapter,
    train_loop,
    trainable_parameters,
)


def _cfg(**kw) -> TrainConfig:
    base = {"batch_size": 2, "max_steps": 6, "max_len": 48, "checkpoint_every": 2, "lr": 5e-3, "seed": 3}
    return TrainConfig(**{**base, **kw})


def test_resume_after_kill_equals_uninterrupted(tiny_gpt2_dir, tmp_path):
    """A run stopped after step 3 (last checkpoint at 2) and resumed ends with the same adapter and losses."""
    whole = finetune_plain(str(tiny_gpt2_dir), "piqa", tmp_path / "a", _cfg(), limit=8, progress=False)
    part = finetune_plain(
        str(tiny_gpt2_dir), "piqa", tmp_path / "b", _cfg(), limit=8, progress=False, stop_after=3
    )
    assert part["result"]["steps"] == 3 and "adapter" not in part  # killed: no final adapter yet
    with pytest.raises(P3eftError, match="--resume"):
        finetune_plain(str(tiny_gpt2_dir), "piqa", tmp_path / "b", _cfg(), limit=8, progress=False)
    with pytest.raises(P3eftError, match="different settings"):
        finetune_plain(
            str(tiny_gpt2_dir), "piqa", tmp_path / "b", _cfg(lr=1e-3), limit=8, progress=False, resume=True
        )
    resumed = finetune_plain(
        str(tiny_gpt2_dir), "piqa", tmp_path / "b", _cfg(), limit=8, progress=False, resume=True
    )
    assert resumed["result"]["resumed_from"] == 2
    assert resumed["result"]["losses"] == whole["result"]["losses"]
    a = load_file(Path(whole["adapter"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # it did learn something
    latest = (tmp_path / "b" / "checkpoints" / "LATEST").read_text()
    assert latest == "step-00000006" and not list(
        (tmp_path / "b" / "checkpoints").glob(".*")
    )  # no temp leftovers


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_adapter_reloads_in_plain_peft_with_identical_logits(fixture, request, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    loaded = load_causal_lm(folder)
    cfg = _cfg(max_steps=3)
    peft_model = attach_lora(loaded, cfg)
    items = build_lm_training_examples(
        loaded.tokenizer, load_task("obqa", "train", limit=4).examples, cfg.max_len
    )
    batches = StepBatches(items, 2, 0, lambda b: collate_lm(b, loaded.tokenizer.pad_token_id))
    peft_model.train()
    train_loop(lambda b: peft_model(**b).loss, trainable_parameters(peft_model), batches, cfg, progress=False)
    peft_model.eval()
    save_adapter(peft_model, tmp_path / "adapter", {"model": loaded.spec.name})
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    ids = torch.tensor([loaded.tokenizer("The sun is responsible for plants growing")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(folder)
        plain_base = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        got = reloaded(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(plain_base, expected)  # the adapter changes the model


@pytest.mark.slow
def test_real_smollm2_loss_goes_down_on_real_data():
    """Four LoRA steps on real SmolLM2-135M and two real OpenBookQA examples lower the loss on them.

    lr is 3e-3 here instead of the paper's 3e-5 so that 4 tiny steps move the loss measurably.
    """
    loaded = load_causal_lm("smollm2-135m")
    assert not loaded.weights_random
    cfg = TrainConfig(lr=3e-3, batch_size=2, max_steps=4, max_len=40, seed=0)
    peft_model = attach_lora(loaded, cfg)
    items = build_lm_training_examples(
        loaded.tokenizer, load_task("obqa", "train", limit=2).examples, cfg.max_len
    )
    fixed = collate_lm(items, loaded.tokenizer.pad_token_id)

    def eval_loss() -> float:
        peft_model.eval()
        with torch.no_grad():
            loss = float(peft_model(**fixed).loss)
        peft_model.train()
        return loss

    before = eval_loss()
    batches = StepBatches(
        items, cfg.batch_size, cfg.seed, lambda b: collate_lm(b, loaded.tokenizer.pad_token_id)
    )
    res = train_loop(
        lambda b: peft_model(**b).loss, trainable_parameters(peft_model), batches, cfg, progress=False
    )
    after = eval_loss()
    assert res.steps == 4 and res.tokens > 0
    assert after < 0.7 * before, (before, after, res.losses)


def test_sigkilled_cli_run_resumes_exactly(tiny_gpt2_dir, tmp_path):
    """A real `p3eft finetune` process killed with SIGKILL after a checkpoint resumes to the same adapter."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = ["--model", str(tiny_gpt2_dir), "--dataset", "piqa", "--limit", "8", "--batch-size", "2"]
    args += ["--max-len", "48", "--lr", "5e-3", "--seed", "3", "--checkpoint-every", "2", "--no-progress"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p3eft.cli.main",
            "finetune",
            *args,
            "--max-steps",
            "100000",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    latest = out / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 120
    while not (latest.is_file() and latest.read_text() >= "step-00000004"):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int((out / "checkpoints" / "LATEST").read_text().split("-")[1])
    total = killed_at + 3
    cfg = _cfg(max_steps=total, checkpoint_every=2, max_len=48)
    resumed = finetune_plain(str(tiny_gpt2_dir), "piqa", out, cfg, limit=8, progress=False, resume=True)
    whole = finetune_plain(str(tiny_gpt2_dir), "piqa", tmp_path / "whole", cfg, limit=8, progress=False)
    assert resumed["result"]["resumed_from"] >= 4
    assert resumed["result"]["losses"] == whole["result"]["losses"]
    a = load_file(Path(whole["adapter"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["adapter"]) / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("which", "per_layer"), [("tiny_gpt2_dir", 4), ("tiny_llama_dir", 7), ("bert-tiny", 6)]
)
def test_lora_targets_every_attention_and_mlp_linear(which, per_layer, request):
    from p3eft.models import load_sequence_classifier

    if which == "bert-tiny":
        loaded = load_sequence_classifier("bert-tiny")
    else:
        loaded = load_causal_lm(request.getfixturevalue(which))
    layers = loaded.model.config.num_hidden_layers
    peft_model = attach_lora(loaded, TrainConfig())
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert len(wrapped) == per_layer * layers, sorted(wrapped)
    assert not any("pooler" in n or "lm_head" in n or "wte" in n for n in wrapped)
    names = trainable_parameters(peft_model)
    assert all("lora_" in n or "classifier" in n for n in names)  # base weights stay frozen
