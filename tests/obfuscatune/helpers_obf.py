"""Small models and a plain PEFT reference for the ObfuscaTune tests."""

from __future__ import annotations

import copy

import torch
import transformers

VOCAB = 320


def tiny_gpt2(dtype=torch.float64, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_embd=64,
        n_layer=layers,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def tiny_llama(dtype=torch.float64, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def batch(seed: int = 0, b: int = 3, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    att = torch.ones_like(ids)
    att[-1, t - 3 :] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[att == 0] = -100
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def plain_peft(model: torch.nn.Module, export: dict) -> torch.nn.Module:
    """A plain model with the exported adapter attached through ``peft`` itself."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    cfg = dict(export["config"])
    cfg.pop("base_model_name_or_path", None)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**cfg))
    result = set_peft_model_state_dict(peft_model, export["tensors"])
    assert not [k for k in result.unexpected_keys if "lora" in k]
    return peft_model
