"""Options shared by the fine-tuning commands of every scheme, so that they keep the same flags.

`p3eft finetune` (plain reference) and `p3eft obfuscatune finetune` take the same training flags; the
issue asks the scheme commands to mirror the plain ones, and one definition keeps them in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from p3eft.errors import P3eftError

if TYPE_CHECKING:  # imported lazily below: keeps `p3eft --help` free of torch
    from p3eft.tuning import TrainConfig

MODEL = typer.Option("smollm2-135m", "--model", help="Registry name or local model folder.")
MAX_STEPS = typer.Option(
    100, "--max-steps", help="Optimiser steps in total (a resumed run counts earlier ones)."
)
TRAIN_LIMIT = typer.Option(None, "--limit", help="Use only the first N training examples.")
CHECKPOINT_EVERY = typer.Option(
    0, "--checkpoint-every", help="Checkpoint every K steps (0: only at the end)."
)
DATA_DIR = typer.Option(None, "--data-dir", help="Dataset folder (default: $P3EFT_DATA, ../shared/data).")
LR = typer.Option(3e-5, "--lr")
RANK = typer.Option(16, "--rank")
ALPHA = typer.Option(32.0, "--alpha")
DROPOUT = typer.Option(0.05, "--dropout")
BATCH_SIZE = typer.Option(8, "--batch-size")
MAX_LEN = typer.Option(256, "--max-len", help="Longest training sequence in tokens (cut from the left).")
SEED = typer.Option(0, "--seed")
JSON_OUT = typer.Option(None, "--json", help="Also write the results JSON here.")
PROGRESS = typer.Option(True, "--progress/--no-progress")


def train_config(
    out: Path,
    *,
    lr: float,
    rank: int,
    alpha: float,
    dropout: float,
    batch_size: int,
    max_steps: int,
    max_len: int,
    seed: int,
    checkpoint_every: int,
    limit: int | None,
    target_modules: list[str] | None = None,
) -> TrainConfig:
    """The training configuration from the shared flags, refusing values no run can use."""
    from p3eft.tuning import TrainConfig

    if limit is not None and limit <= 0:
        raise P3eftError(f"--limit must be a positive number of examples, got {limit}")
    if checkpoint_every < 0:
        raise P3eftError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    return TrainConfig(
        lr=lr,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=target_modules,
        batch_size=batch_size,
        max_steps=max_steps,
        max_len=max_len,
        seed=seed,
        checkpoint_every=checkpoint_every,
        out_dir=str(out),
    )
