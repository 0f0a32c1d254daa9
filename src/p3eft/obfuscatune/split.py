"""Where a Hugging Face causal LM is cut into an enclave part and an untrusted part.

The untrusted accelerator gets the four big linears of every block (as obfuscated weights); the
enclave keeps everything else: token/position embeddings, all norms (LayerNorm, RMSNorm), rotary
embeddings, attention scores/softmax/weighted sum (ours: also in paper mode), GELU / SiLU-gating,
every bias (ours: also the Q/K/V biases, so no plaintext parameter is on the untrusted side), the LM
head and the loss.

Linears that read the same input form one *group* (GPT-2 ``c_attn``; Llama ``q/k/v_proj``, and
``gate/up_proj``), so the masked input crosses once. Weights are handled in row-vector layout
``(d_in, d_out)`` (``y = x @ W``): GPT-2's ``Conv1D`` stores exactly that, ``nn.Linear`` its transpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from p3eft.errors import P3eftError

Family = Literal["gpt2", "llama"]
ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_out")

# per family: role -> attribute paths inside one block
_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {
        "attn_in": ("attn.c_attn",),
        "attn_out": ("attn.c_proj",),
        "mlp_in": ("mlp.c_fc",),
        "mlp_out": ("mlp.c_proj",),
    },
    "llama": {
        "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
        "mlp_out": ("mlp.down_proj",),
    },
}
_BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}


@dataclass(frozen=True)
class BoundaryPart:
    """One linear on the untrusted side."""

    path: str  # module path in the HF model, e.g. "transformer.h.0.attn.c_attn"
    d_in: int
    d_out: int


@dataclass(frozen=True)
class BoundaryGroup:
    """Linears of one block that share their input; ``layer`` is the name used on the wire."""

    layer: str  # e.g. "h.3.attn_in"
    role: str
    block: int
    parts: tuple[BoundaryPart, ...]

    @property
    def d_in(self) -> int:
        return self.parts[0].d_in


@dataclass
class MaskSides:
    """Which sides of a group's linears are masked in a mode."""

    input: bool
    output: bool


def mask_sides(mode: str, role: str) -> MaskSides:
    """``strict`` (ours, default): both sides of every linear. ``paper``: input side for Q/K/V,
    output side for the attention output projection and both MLP linears, as published."""
    if mode == "strict":
        return MaskSides(True, True)
    if mode == "paper":
        return MaskSides(True, False) if role == "attn_in" else MaskSides(False, True)
    raise P3eftError(f"unknown ObfuscaTune mode {mode!r}: use strict or paper")


def model_family(model: nn.Module) -> Family:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt == "gpt2":
        return "gpt2"
    if mt in ("llama", "mistral", "qwen2"):
        return "llama"
    raise P3eftError(f"ObfuscaTune splits GPT-2 and Llama-family models, not model_type {mt!r}")


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_embd", None) or cfg.hidden_size)


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, BoundaryLinear):
        return module.in_features, module.out_features
    raise P3eftError(f"unexpected module type {type(module).__name__} at a boundary")


def boundary_groups(model: nn.Module) -> list[BoundaryGroup]:
    """The groups of the split, in forward order (describes; changes nothing)."""
    family = model_family(model)
    blocks = model.get_submodule(_BLOCKS[family])
    groups = []
    for i, _ in enumerate(blocks):
        for role in ROLES:
            parts = []
            for rel in _PARTS[family][role]:
                path = f"{_BLOCKS[family]}.{i}.{rel}"
                d_in, d_out = _linear_shape(model.get_submodule(path))
                parts.append(BoundaryPart(path, d_in, d_out))
            groups.append(BoundaryGroup(f"h.{i}.{role}", role, i, tuple(parts)))
    return groups


def plain_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W in (d_in, d_out) layout, bias) of a GPT-2 Conv1D or an nn.Linear."""
    if isinstance(module, nn.Linear):
        return module.weight.detach().T, None if module.bias is None else module.bias.detach()
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


class BoundaryLinear(nn.Module):
    """Stand-in for a linear whose weight lives (obfuscated) on the untrusted side.

    It keeps only the bias (enclave-side) and asks its group's :class:`GroupLink` for the product.
    """

    def __init__(self, d_in: int, d_out: int, bias: torch.Tensor | None, part: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.part = d_in, d_out, part
        self.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)
        self.link: GroupLink | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.link is None:
            raise P3eftError("this enclave model is not connected to an untrusted accelerator")
        y = self.link.output(x, self.part)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, part={self.part} (weight on the untrusted side)"
        )


class GroupLink:
    """What a group's :class:`BoundaryLinear` modules call; implemented by the enclave."""

    def output(self, x: torch.Tensor, part: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class SplitModel:
    """The enclave part (the HF model with boundary stand-ins) and what was cut out of it."""

    family: Family
    enclave_model: nn.Module
    groups: list[BoundaryGroup]
    stubs: dict[str, BoundaryLinear]  # by part path
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # plaintext W by part path (to obfuscate)

    def untrusted_parameters(self) -> int:
        return sum(p.d_in * p.d_out for g in self.groups for p in g.parts)

    def enclave_parameters(self) -> int:
        seen, total = set(), 0
        for p in self.enclave_model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    def accounting(self) -> dict[str, float | int]:
        """Parameter shares measured on this split (nothing hard-coded)."""
        enc, unt = self.enclave_parameters(), self.untrusted_parameters()
        total = enc + unt
        named: dict[str, int] = {}
        seen: set[int] = set()
        for name, p in self.enclave_model.named_parameters(remove_duplicate=True):
            if id(p) in seen:
                continue
            seen.add(id(p))
            key = (
                "biases (boundary linears)"
                if ".bias" in name and _is_stub_param(name, self.stubs)
                else _kind(name)
            )
            named[key] = named.get(key, 0) + p.numel()
        return {
            "total_parameters": total,
            "enclave_parameters": enc,
            "untrusted_parameters": unt,
            "enclave_param_share": enc / total,
            "untrusted_param_share": unt / total,
            "enclave_breakdown": named,
        }


def _is_stub_param(name: str, stubs: dict[str, BoundaryLinear]) -> bool:
    return name.rsplit(".", 1)[0] in stubs


def _kind(name: str) -> str:
    if "wte" in name or "embed_tokens" in name:
        return "token embeddings (tied LM head)"
    if "wpe" in name:
        return "position embeddings"
    if "lm_head" in name:
        return "LM head"
    if "ln" in name or "norm" in name:
        return "norms"
    return "other"


def split_model(model: nn.Module, *, keep_weights: bool = True) -> SplitModel:
    """Cut ``model`` in place: each boundary linear becomes a :class:`BoundaryLinear` holding only its
    bias; the plaintext weights are returned (for obfuscation) and no longer referenced by the model.

    Works on a ``meta``-device model too (accounting for models that would not fit in memory).
    """
    family = model_family(model)
    groups = boundary_groups(model)
    stubs: dict[str, BoundaryLinear] = {}
    weights: dict[str, torch.Tensor] = {}
    for g in groups:
        for k, part in enumerate(g.parts):
            module = model.get_submodule(part.path)
            w, b = plain_weight(module)
            stub = BoundaryLinear(part.d_in, part.d_out, b, k)
            parent_path, attr = part.path.rsplit(".", 1)
            setattr(model.get_submodule(parent_path), attr, stub)
            stubs[part.path] = stub
            if keep_weights:
                weights[part.path] = w
    for p in model.parameters():
        p.requires_grad_(False)
    return SplitModel(family, model, groups, stubs, weights)
