"""Every flag that more than one command takes, defined once, with its help text and its valid range.

`p3eft finetune` / `evaluate` (plain reference) and `p3eft obfuscatune finetune` / `evaluate` take
the same training and evaluation flags; defining them here keeps their names, help and limits in step.
Numeric limits are click ranges (``min=``/``max=``), so a bad value (``--batch-size 0``) is refused
while the command line is parsed, before any model loads, as one ``p3eft: error:`` line with exit 2.
The library checks the same limits again for callers that do not go through the CLI
(:class:`p3eft.tuning.TrainConfig`, :func:`p3eft.tuning.score_multiple_choice`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from p3eft.errors import P3eftError

if TYPE_CHECKING:  # imported lazily below: keeps `p3eft --help` free of torch
    from p3eft.tuning import TrainConfig


def _positive_float(text: str) -> float:
    return _float_in(text, "x>0", lambda x: x > 0)


def _dropout(text: str) -> float:
    return _float_in(text, "0<=x<1", lambda x: 0.0 <= x < 1.0)


def _float_in(text: str, rule: str, ok) -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not ok(value):
        raise typer.BadParameter(f"{text} is not in the range {rule}")
    return value


# --- what to run on ------------------------------------------------------------------------------
MODEL = typer.Option(
    "smollm2-135m", "--model", help="Registry name (p3eft models list) or local model folder."
)
MC_DATASET = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa or sciq.")
DATA_DIR = typer.Option(None, "--data-dir", help="Dataset folder (default: $P3EFT_DATA, ../shared/data).")
ADAPTER = typer.Option(
    None, "--adapter", help="A PEFT adapter folder in plain coordinates (a finetune's OUT/adapter)."
)

# --- training ------------------------------------------------------------------------------------
MAX_STEPS = typer.Option(
    100, "--max-steps", min=1, help="Optimiser steps in total (a resumed run counts earlier ones)."
)
TRAIN_LIMIT = typer.Option(None, "--limit", min=1, help="Use only the first N training examples.")
CHECKPOINT_EVERY = typer.Option(
    0, "--checkpoint-every", min=0, help="Checkpoint every K steps (0: only at the end)."
)
LR = typer.Option(3e-5, "--lr", parser=_positive_float, help="Learning rate (ObfuscaTune's appendix: 3e-5).")
RANK = typer.Option(16, "--rank", min=1, help="LoRA rank r.")
ALPHA = typer.Option(
    32.0, "--alpha", parser=_positive_float, help="LoRA alpha (the update is scaled by alpha/r)."
)
DROPOUT = typer.Option(0.05, "--dropout", parser=_dropout, help="LoRA dropout, in [0, 1).")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Examples per optimiser step.")
MAX_LEN = typer.Option(
    256, "--max-len", min=2, help="Longest training sequence in tokens (cut from the left)."
)
SEED = typer.Option(0, "--seed", min=0, help="Seed of the LoRA initialisation, batch order and dropout.")
RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out.")

# --- evaluation ----------------------------------------------------------------------------------
EVAL_LIMIT = typer.Option(None, "--limit", min=1, help="Score only the first N evaluation examples.")
EVAL_BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Sequences per forward pass while scoring.")
EVAL_MAX_LEN = typer.Option(
    1024,
    "--max-len",
    "--max-length",  # the old spelling of `obfuscatune evaluate`, kept as an alias
    min=2,
    help="Longest scored sequence in tokens (context cut from the left).",
)

# --- output --------------------------------------------------------------------------------------
JSON_OUT = typer.Option(None, "--json", help="Also write the results JSON here.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")


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
    target_modules: list[str] | None = None,
) -> TrainConfig:
    """The training configuration from the shared flags (their ranges were checked while parsing)."""
    from p3eft.tuning import TrainConfig

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


def check_json_out(path: Path | None) -> None:
    """Refuse a ``--json`` path that cannot be written, before any model loads."""
    if path is None:
        return
    from p3eft.tuning.checkpoint import check_writable_file

    check_writable_file(path, "--json")


def float_list(flag: str, text: str) -> list[float]:
    """``"1,10,100"`` -> ``[1.0, 10.0, 100.0]``; anything else is one clear error naming the flag."""
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise P3eftError(
                f"{flag} takes comma-separated numbers, got {part.strip()!r} in {text!r}"
            ) from None
    if not values:
        raise P3eftError(f"{flag} needs at least one number")
    return values


def name_list(text: str) -> list[str]:
    """``"a,b,"`` -> ``["a", "b"]``."""
    return [p.strip() for p in text.split(",") if p.strip()]


def training_line(res: dict[str, Any], what: str) -> str:
    """One summary line for a training run, the same for every scheme (losses to 4 decimals)."""
    r = res["result"]
    weights = "RANDOM weights" if res.get("weights_random") else "real weights"
    resumed = f" (resumed from {r['resumed_from']})" if r.get("resumed_from") else ""
    speed = f", {r['tokens_per_second']:.0f} tokens/s" if r.get("tokens_per_second") else ""
    return (
        f"trained {res['model']} [{weights}{what}] on {res['train']['dataset']} for {r['steps']} steps{resumed}: "
        f"loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}, {r['seconds_this_run']:.1f} s{speed}"
    )


def evaluation_line(res: dict[str, Any], what: str = "") -> str:
    """One summary line for an evaluation: only the metrics that mean something for the dataset."""
    weights = "RANDOM weights" if res.get("weights_random") else "real weights"
    ev = res["eval"]
    score = " ".join(f"{m}={res[m]:.4f}" for m in res["metrics"])
    return (
        f"{ev['dataset']} {ev['split']} (n={res['n']}, metric {res['metric']}): {score} "
        f"[{res['model']}, {weights}{what}]"
    )
