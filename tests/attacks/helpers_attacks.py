"""A tiny Llama victim for the attack tests (seconds, no downloads)."""

from __future__ import annotations

import functools

import torch
from helpers_obf import VOCAB, batch, tiny_llama

from p3eft.attacks import tokens
from p3eft.attacks.victim import Traffic, VictimConfig, run_victim


@functools.cache
def public_model() -> torch.nn.Module:
    """Tiny Llama whose norm gains are not all one (a trained model's are not; with unit gains every
    first vector has the same norm and the norm step has nothing to match)."""
    model = tiny_llama(torch.float32, layers=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(1 + 0.5 * torch.randn(64, generator=g))
    return model


@functools.cache
def traffic() -> Traffic:
    return Traffic([batch(1, 8, 16), batch(2, 8, 16)], batch(3, 4, 16))


@functools.cache
def prior() -> torch.Tensor:
    return tokens.unigram_prior([batch(9, 8, 16)["input_ids"].flatten().tolist()], VOCAB)


@functools.cache
def victim(mode: str, masks: str, defence: str, delta: float = 0.01):
    return run_victim(public_model(), traffic(), VictimConfig(mode, masks, defence, delta))
