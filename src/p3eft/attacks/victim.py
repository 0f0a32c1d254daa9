"""A victim to attack: the public model, a synthetic proprietary fine-tune of it, and a recorded session.

The proprietary model is the public one with a random delta of relative size ``delta`` on every
boundary weight (``W = W_pub + delta * ||W_pub|| * G / ||G||``, G Gaussian; ours: a stand-in for a
fine-tune, whose weights the attacker must not learn). Embeddings and norms stay public, as in a
LoRA-style fine-tune. The session runs the settings under attack; the data owner sends a few
inference batches and one training step, and the boundary traffic of the recorded layers is kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from p3eft.attacks.recorder import RecordingChannel, Transcript
from p3eft.channel import InProcessChannel
from p3eft.errors import P3eftError
from p3eft.obfuscatune.cloud import UntrustedCloud
from p3eft.obfuscatune.enclave import (
    DEFAULT_DEFENCE,
    DEFAULT_MASKS,
    DEFAULT_MODE,
    Enclave,
    EnclaveSettings,
)
from p3eft.obfuscatune.masks import Mask
from p3eft.obfuscatune.session import provision_model
from p3eft.obfuscatune.split import BoundaryGroup, boundary_groups, model_family, plain_weight


@dataclass(frozen=True)
class VictimConfig:
    """The configuration under attack."""

    mode: str = DEFAULT_MODE
    masks: str = DEFAULT_MASKS
    defence: str = DEFAULT_DEFENCE
    delta: float = 0.01
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.mode}/{self.masks}/{self.defence}"


@dataclass
class Traffic:
    """The data owner's requests: inference batches, then one training batch (labels -100 off the loss span)."""

    infer: list[dict[str, torch.Tensor]]
    train: dict[str, torch.Tensor] | None = None

    def calls(self) -> list[dict[str, torch.Tensor]]:
        return list(self.infer) + ([self.train] if self.train is not None else [])


@dataclass
class Victim:
    config: VictimConfig
    public: torch.nn.Module  # the attacker's public base model
    groups: list[BoundaryGroup]
    transcript: Transcript
    traffic: Traffic
    proprietary: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # scoring only
    # scoring only: the enclave's masks of the recorded layers, layer -> (mask_in, [mask_out per part])
    masks: dict[str, tuple[Mask | None, list[Mask | None]]] = field(repr=False, default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return 1 + max(g.block for g in self.groups)

    def group(self, layer: str) -> BoundaryGroup:
        return next(g for g in self.groups if g.layer == layer)

    def public_weight(self, layer: str, part: int) -> torch.Tensor:
        path = self.group(layer).parts[part].path
        return plain_weight(self.public.get_submodule(path))[0].detach().to(torch.float64)

    def true_weight(self, layer: str, part: int) -> torch.Tensor:
        return self.proprietary[self.group(layer).parts[part].path].to(torch.float64)

    def true_mask(self, layer: str, part: int | None = None) -> torch.Tensor | None:
        """Scoring only: the dense input mask (``part`` None) or output mask of ``part`` (None: unmasked side)."""
        mask_in, masks_out = self.masks[layer]
        m = mask_in if part is None else masks_out[part]
        return None if m is None else m.matrix().to(torch.float64)


def proprietary_model(public: torch.nn.Module, delta: float, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A copy of ``public`` whose boundary weights carry a random delta of relative Frobenius size ``delta``;
    with the proprietary weights of the recorded layers (the only ones an attack is scored on)."""
    model = copy.deepcopy(public)
    gen = torch.Generator().manual_seed(seed)
    keep = recorded_layers(public)
    weights = {}
    with torch.no_grad():
        for g in boundary_groups(model):
            for part in g.parts:
                module = model.get_submodule(part.path)
                noise = torch.randn(module.weight.shape, generator=gen, dtype=torch.float64)
                w = module.weight.detach().to(torch.float64)
                w = w + delta * w.norm() * noise / noise.norm()
                module.weight.copy_(w.to(module.weight.dtype))
                if g.layer in keep:
                    weights[part.path] = plain_weight(module)[0].detach().clone()
    return model, weights


def first_blocks(model: torch.nn.Module, n: int = 1) -> torch.nn.Module:
    """A Llama-family ``model`` cut to its first ``n`` decoder blocks, sharing every tensor (ours, for
    speed: block 0's traffic does not depend on later blocks, so attacks on block 0 alone -- the weight
    attacks of further deltas -- see exactly the same crossings, masks and weights as on the full model;
    the enclave builds its copy from the cut config, so it also provisions and runs n blocks only)."""
    if not hasattr(getattr(model, "model", None), "layers"):
        raise P3eftError("first_blocks: a Llama-family model (model.model.layers) is needed")
    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)
    inner.layers = torch.nn.ModuleList(list(model.model.layers)[:n])
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out.model = inner
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = n
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:n]
    out.config = inner.config = cfg
    return out


def recorded_layers(public: torch.nn.Module) -> set[str]:
    """Block 0 (tokens, weights) and the last block's output projection (loss span)."""
    groups = boundary_groups(public)
    last = max(g.block for g in groups)
    return {g.layer for g in groups if g.block == 0} | {f"h.{last}.mlp_out"}


def run_victim(
    public: torch.nn.Module,
    traffic: Traffic,
    config: VictimConfig,
    *,
    proprietary: tuple[torch.nn.Module, dict] | None = None,
    layers: set[str] | None = None,
) -> Victim:
    """Provision an enclave with the proprietary model under ``config``, send ``traffic``, record the boundary."""
    model_family(public)  # clear error for unsupported models
    prop_model, prop_weights = proprietary or proprietary_model(public, config.delta, config.seed)
    dtype = "float64" if next(public.parameters()).dtype == torch.float64 else "float32"
    recorder = RecordingChannel(
        InProcessChannel(UntrustedCloud(device="cpu")), layers or recorded_layers(public)
    )
    settings = EnclaveSettings(
        mode=config.mode,
        masks=config.masks,
        defence=config.defence,
        dtype=dtype,
        lora_dropout=0.0,
        session_seed=bytes([config.seed % 256]) * 32,
    )
    enclave = Enclave(recorder, settings)
    provision_model(InProcessChannel(enclave), prop_model)
    for batch in traffic.infer:
        enclave.logits(batch["input_ids"], batch["attention_mask"])
    if traffic.train is not None:
        enclave.configure_training(optimizer="sgd", lr=1e-3)
        enclave.train_step(
            traffic.train["input_ids"], traffic.train["attention_mask"], traffic.train["labels"]
        )
    masks = {
        layer: (b.mask_in, list(b.masks_out))
        for layer, b in enclave._boundaries.items()  # noqa: SLF001 -- scoring only, never given to an attack
        if recorder.layers is None or layer in recorder.layers
    }
    return Victim(config, public, boundary_groups(public), recorder.transcript, traffic, prop_weights, masks)
