"""One LoRA configuration for plain (peft) and obfuscated training, in the spirit of peft's ``LoraConfig``.

LoRA (Hu et al., arXiv 2106.09685): a frozen linear ``y = x W`` gains a trainable low-rank update,
``y = x W + (alpha / r) * dropout(x) A B`` with ``A`` of shape (d_in, r) and ``B`` of shape (r, d_out).
peft initialises ``A`` Kaiming-uniform (``a = sqrt(5)``, i.e. uniform in +-1/sqrt(d_in)) and ``B = 0``,
so training starts from the base model. The plain reference hands these settings to peft
(:meth:`LoraSettings.peft_config`); ObfuscaTune's untrusted accelerator cannot run peft on obfuscated
weights, so it uses :meth:`LoraSettings.init_pair` and :meth:`LoraSettings.update`, which implement the
same formulas from the same settings. One object, so rank, alpha and dropout cannot drift apart
between the CLI, :class:`~p3eft.tuning.TrainConfig` and the enclave's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from p3eft.errors import P3eftError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (defaults from ObfuscaTune's appendix: r 16, alpha 32, dropout 0.05)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str | None = None  # None: every attention and MLP linear

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise P3eftError(f"LoRA rank must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise P3eftError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise P3eftError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def scaling(self) -> float:
        """The update's scale ``alpha / r`` (Hu et al., eq. 3; peft's ``scaling``)."""
        return self.alpha / self.r

    def targets(self, family: str) -> list[str] | str:
        """The modules that get adapters in a model family (default: all attention and MLP linears)."""
        from p3eft.tuning.config import default_target_modules

        t = self.target_modules
        if t is None:
            return default_target_modules(family)
        return t if isinstance(t, str) else list(t)

    def peft_config(self, family: str, *, seq_cls: bool = False) -> Any:
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig, TaskType

        return LoraConfig(
            **self.peft_kwargs(family), task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM
        )

    def peft_kwargs(self, family: str) -> dict[str, Any]:
        """``LoraConfig`` fields (JSON-ready), as an exported adapter's ``adapter_config.json`` holds them."""
        return {
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets(family),
            "fan_in_fan_out": family == "gpt2",  # GPT-2 stores its linears as Conv1D (in x out)
        }

    @classmethod
    def from_peft(cls, cfg: dict[str, Any]) -> LoraSettings:
        """From an ``adapter_config.json``."""
        targets = cfg.get("target_modules")
        return cls(
            r=int(cfg["r"]),
            alpha=float(cfg["lora_alpha"]),
            dropout=float(cfg.get("lora_dropout", 0.0)),
            target_modules=tuple(targets) if isinstance(targets, list | tuple | set) else targets,
        )

    def to_wire(self) -> dict[str, Any]:
        """What travels to the untrusted accelerator (no secret in it)."""
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> LoraSettings:
        return cls(r=int(d["r"]), alpha=float(d["alpha"]), dropout=float(d["dropout"]))

    def init_pair(
        self, d_in: int, d_out: int, *, generator: torch.Generator, dtype: torch.dtype, device: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh ``(A [d_in, r], B [r, d_out])``: A uniform in +-1/sqrt(d_in) (peft's Kaiming init), B = 0."""
        bound = 1.0 / math.sqrt(d_in)
        a = (
            torch.rand(d_in, self.r, generator=generator, device=device, dtype=torch.float64) * 2 - 1
        ) * bound
        return a.to(dtype), torch.zeros(self.r, d_out, dtype=dtype, device=device)

    def drop(self, x: torch.Tensor, *, train: bool, generator: torch.Generator) -> torch.Tensor:
        """Inverted dropout on the adapter's input (training only), as peft's ``lora_dropout``."""
        if not train or self.dropout == 0:
            return x
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= self.dropout
        return x * keep / (1.0 - self.dropout)

    def update(self, x_dropped: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The low-rank update ``(alpha / r) * x A B`` added to the frozen linear's output."""
        return (x_dropped @ a @ b) * self.scaling
