"""Training hyper-parameters and LoRA targets.

Defaults from ObfuscaTune's appendix (Frikha et al., arXiv 2407.02960): LoRA rank 16, alpha 32,
dropout 0.05, learning rate 3e-5, adapters on all attention and MLP linear layers. Batch size,
sequence length, weight decay, gradient clipping and the optimiser (AdamW) are ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from p3eft.tuning.lora import LoraSettings

# Names of every attention and MLP linear layer per family (peft matches module-name suffixes).
TARGET_MODULES: dict[str, list[str] | str] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # GPT-2: c_attn (fused QKV), attn.c_proj, mlp.c_fc, mlp.c_proj (Conv1D layers).
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    # BERT: a regex so the pooler's `dense` (not attention or MLP) is left alone.
    "bert": r".*encoder\.layer\.\d+\..*(query|key|value|dense)$",
}


def default_target_modules(family: str) -> list[str] | str:
    """All attention and MLP linears of a model family."""
    return TARGET_MODULES[family]


@dataclass
class TrainConfig:
    """Everything a (resumable) LoRA fine-tuning run needs besides the model and the data."""

    lr: float = 3e-5
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | str | None = None  # None: all attention + MLP linears of the family
    batch_size: int = 8
    max_steps: int = 100
    max_len: int = 256
    seed: int = 0
    checkpoint_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    weight_decay: float = 0.0  # ours
    grad_clip: float | None = 1.0  # ours
    out_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from p3eft.errors import P3eftError

        for name in ("lr", "rank", "alpha", "batch_size", "max_steps", "max_len"):
            if getattr(self, name) <= 0:
                raise P3eftError(f"{name} must be positive, got {getattr(self, name)}")
        self.lora  # noqa: B018  (validates rank, alpha, dropout in one place: LoraSettings)

    @property
    def lora(self) -> LoraSettings:
        """The LoRA part of this config, as the one object plain and obfuscated training both use."""
        targets = self.target_modules
        return LoraSettings(
            r=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=tuple(targets) if isinstance(targets, list) else targets,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Fields that must match for ``--resume`` to continue the same run (max_steps may grow)."""
        d = self.to_dict()
        for k in ("max_steps", "checkpoint_every", "keep_checkpoints", "out_dir"):
            d.pop(k)
        return d
