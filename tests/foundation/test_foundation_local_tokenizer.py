"""A local model folder without tokenizer files falls back to the family's shipped tokenizer.

transformers 5 would otherwise build an empty tokenizer that turns every text into zero tokens.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from p3eft.models import load_causal_lm, load_tokenizer


def test_folder_without_tokenizer_uses_real_gpt2_tokenizer(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)).save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    assert load_tokenizer(tmp_path)("Hello world")["input_ids"] == [15496, 995]
    loaded = load_causal_lm(str(tmp_path))
    assert loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]
