"""`p3eft demo` end to end on a tiny GPT-2 folder: every party a process, JSON as documented."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import transformers

from p3eft.cli.main import main


def test_demo_writes_the_documented_json(tmp_path, capsys):
    from p3eft.models import sources

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    folder = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    for f in sources.gpt2_tokenizer_dir().iterdir():
        shutil.copy(f, folder / f.name)
    out_json = tmp_path / "demo.json"
    argv = ["demo", "--json", str(out_json), "--out", str(tmp_path / "run"), "--model", str(folder)]
    assert main([*argv, "--steps", "2", "--limit", "8", "--eval-limit", "2"]) == 0
    s = json.loads(out_json.read_text())
    assert s["networked"] is True and s["steps"] == 2
    assert set(s["parties"]) >= {"cloud", "enclave", "model-owner", "data-owner"}
    assert len(set(s["parties"].values())) == len(s["parties"])  # each party its own process
    assert s["final_loss"] == s["in_process_final_loss"] and s["adapters_bit_identical"] is True
    assert (tmp_path / "run" / "data-owner" / "adapter" / "adapter_model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "adapter (plain PEFT):" in printed and "results:" in printed
    for pid in s["parties"].values():  # every child was stopped
        try:
            os.kill(pid, 0)
            alive = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        assert not alive, pid
