"""Shared fixtures for the foundation tests: tiny local model folders (fast, random, seeded).

Threads, random states and environment variables are reset around every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest
import torch


def _save_tiny(path, config) -> None:
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast

    from p3eft.models.sources import gpt2_tokenizer_dir

    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir()).save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 (width 32) with the real GPT-2 tokenizer, saved as a local model folder."""
    from transformers import GPT2Config

    path = tmp_path_factory.mktemp("tiny-gpt2")
    _save_tiny(path, GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256))
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer Llama (width 32, grouped KV heads) with the GPT-2 tokenizer, saved as a local model folder."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(
        vocab_size=50257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    _save_tiny(path, cfg)
    return path
