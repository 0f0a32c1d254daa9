"""Who does how much: parameters and arithmetic per token of the enclave and the accelerator.

Everything is read off an actual split (built on the ``meta`` device, so GPT2-XL costs no memory).
Arithmetic is counted in FLOPs per token (2 per multiply-accumulate). The per-element costs of norms
and nonlinearities are our estimates (constants below); the matrix work -- linears, masks, attention
products, LM head -- is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from p3eft.obfuscatune.masks import parse_masks
from p3eft.obfuscatune.mixing import parse_defence
from p3eft.obfuscatune.split import SplitModel, hidden_size, mask_sides, split_model

# ours: FLOPs per element of the non-matrix steps
LAYERNORM_FLOPS = 8  # mean, variance, normalise, scale, shift
RMSNORM_FLOPS = 4
GELU_FLOPS = 8  # tanh approximation
SILU_GATE_FLOPS = 6  # sigmoid, multiply, gate product
ROPE_FLOPS = 3
SOFTMAX_FLOPS = 5
RESIDUAL_FLOPS = 1


def meta_split(config: Any) -> SplitModel:
    """Split the architecture of ``config`` on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return split_model(model, keep_weights=False)


@dataclass
class Arithmetic:
    """FLOPs per token, by who does them."""

    accelerator_linear: float
    accelerator_lora: float
    enclave_masking: float
    enclave_norms_nonlinear: float
    enclave_attention: float
    enclave_lm_head: float
    enclave_mixing: float = 0.0  # row mixing and unmixing (defence mix:K[+fill])
    accelerator_factor: float = 1.0  # accelerator linear work with the random rows / without

    @property
    def accelerator(self) -> float:
        return self.accelerator_linear + self.accelerator_lora

    @property
    def enclave(self) -> float:
        return (
            self.enclave_masking
            + self.enclave_mixing
            + self.enclave_norms_nonlinear
            + self.enclave_attention
            + self.enclave_lm_head
        )

    def to_dict(self) -> dict[str, float]:
        total = self.accelerator + self.enclave
        return {
            "accelerator_flops_per_token": self.accelerator,
            "enclave_flops_per_token": self.enclave,
            "enclave_share": self.enclave / total,
            "masking_share": self.enclave_masking / total,
            "mixing_share": self.enclave_mixing / total,
            "norms_nonlinear_share": self.enclave_norms_nonlinear / total,
            "attention_share": self.enclave_attention / total,
            "lm_head_share": self.enclave_lm_head / total,
            "masking_vs_accelerator": self.enclave_masking / self.accelerator,
            "mixing_vs_accelerator": self.enclave_mixing / self.accelerator,
            "enclave_vs_accelerator": self.enclave / self.accelerator,
            # the stricter ratio: against the model's own linear work, without the noise rows
            "enclave_vs_useful_accelerator": self.enclave * self.accelerator_factor / self.accelerator,
            "accelerator_noise_overhead": self.accelerator_factor - 1.0,
        }


def arithmetic_per_token(
    split: SplitModel,
    *,
    mode: str = "strict",
    masks: str = "orthogonal",
    context: int = 128,
    lora_rank: int = 16,
    defence: str = "none",
    rows_per_call: int | None = None,
    head_share: float = 1.0,
) -> Arithmetic:
    """Per-token arithmetic at an average causal context of ``(context + 1) / 2`` positions.

    A row-mixing ``defence`` adds the enclave's mixing of every crossing row (``(a+b)^2/a`` MACs per
    element with a dense matrix, ``2(a+b)`` with span filling's short-call construction) and unmixing
    of every answer (``a+b``), and the accelerator's random rows (``(a+b)/a`` times its work), with
    the grouping ``(a, b)`` of a call of ``rows_per_call`` rows (default: one prompt of ``context``
    tokens) at each boundary's width (:mod:`p3eft.obfuscatune.mixing`).

    ``head_share``: the share of positions whose logits the enclave computes (ours). 1 for full logits
    (the ``logits`` call); in training, the positions the loss covers (the enclave's loss applies the
    head only there: :func:`~p3eft.obfuscatune.enclave.labelled_positions_loss`); in greedy generation,
    one position per new token (transformers keeps only the last position's logits)."""
    if not 0 < head_share <= 1:
        raise ValueError(f"head_share must be in (0, 1], got {head_share}")
    cfg = split.enclave_model.config
    d = hidden_size(split.enclave_model)
    fam = parse_masks(masks).with_chunk(d)
    mixing = parse_defence(defence)
    rows = context if rows_per_call is None else rows_per_call
    lin = lora = mask = mix = plain_lin = 0.0
    for g in split.groups:
        sides = mask_sides(mode, g.role)
        if sides.input:
            mask += 2 * fam.macs_per_row(g.d_in)
        mix += 2 * mixing.mix_macs_per_element(rows, g.d_in) * g.d_in
        factor = mixing.accelerator_factor(rows, g.d_in)
        for p in g.parts:
            plain_lin += 2 * p.d_in * p.d_out
            lin += factor * 2 * p.d_in * p.d_out
            lora += factor * 2 * lora_rank * (p.d_in + p.d_out)
            mix += 2 * mixing.unmix_macs_per_element(rows, g.d_in) * p.d_out
            if sides.output:
                mask += 2 * fam.macs_per_row(p.d_out)
    layers = len({g.block for g in split.groups})
    heads = int(getattr(cfg, "n_head", None) or cfg.num_attention_heads)
    avg_ctx = (context + 1) / 2
    vocab = int(cfg.vocab_size)
    if split.family == "gpt2":
        inter = next(p.d_out for g in split.groups if g.role == "mlp_in" for p in g.parts)
        per_layer = (
            2 * LAYERNORM_FLOPS * d + GELU_FLOPS * inter + 2 * RESIDUAL_FLOPS * d + (3 * d + d + inter + d)
        )
        norms = layers * per_layer + LAYERNORM_FLOPS * d
        qk_dim = d
    else:
        inter = next(p.d_out for g in split.groups if g.role == "mlp_in" for p in g.parts)
        kv = next(g.parts[1].d_out for g in split.groups if g.role == "attn_in")
        per_layer = (
            2 * RMSNORM_FLOPS * d + SILU_GATE_FLOPS * inter + 2 * RESIDUAL_FLOPS * d + ROPE_FLOPS * (d + kv)
        )
        norms = layers * per_layer + RMSNORM_FLOPS * d
        qk_dim = d
    attention = layers * (2 * 2 * avg_ctx * qk_dim + SOFTMAX_FLOPS * heads * avg_ctx)
    lm_head = 2 * d * vocab * head_share
    return Arithmetic(lin, lora, mask, norms, attention, lm_head, mix, lin / plain_lin)


def model_accounting(
    config: Any,
    *,
    mode: str = "strict",
    masks: str = "orthogonal",
    context: int = 128,
    defence: str = "none",
    rows_per_call: int | None = None,
    head_share: float = 1.0,
) -> dict[str, Any]:
    """Parameter shares and per-token arithmetic of one architecture, from its split (``rows_per_call``
    and ``head_share``: see :func:`arithmetic_per_token`)."""
    split = meta_split(config)
    out = split.accounting()
    out["arithmetic"] = arithmetic_per_token(
        split,
        mode=mode,
        masks=masks,
        context=context,
        defence=defence,
        rows_per_call=rows_per_call,
        head_share=head_share,
    ).to_dict()
    out.update(
        {
            "family": split.family,
            "layers": len({g.block for g in split.groups}),
            "mode": mode,
            "masks": masks,
            "defence": defence,
            "context": context,
            "rows_per_call": context if rows_per_call is None else rows_per_call,
            "head_share": head_share,
        }
    )
    return out
