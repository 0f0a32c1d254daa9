"""Every flag that more than one command takes, defined once, with its help text and its valid range.

`p3eft finetune` / `evaluate` (plain reference), `p3eft obfuscatune finetune` / `evaluate` and
`p3eft privtuner ...` take the same training and evaluation flags; defining them here keeps their
names, help and limits in step. Each numeric flag's range lives in one table, :data:`RANGES`, and
every command builds such a flag with :func:`option`, even where its default or help differs
(PrivTuner's learning rate is not ObfuscaTune's). The ranges are click's (``min=``, or a parser for
floats), so a bad value (``--batch-size 0``, ``--lr -1``, ``--seed -1``) is refused while the command
line is parsed, before any model loads, as one ``p3eft: error:`` line with exit 2.
The library checks the same limits again for callers that do not go through the CLI
(:class:`p3eft.tuning.TrainConfig`, :func:`p3eft.tuning.score_multiple_choice`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from p3eft.errors import P3eftError
from p3eft.outputs import check_writable_file

if TYPE_CHECKING:  # imported lazily below: keeps `p3eft --help` free of torch
    from p3eft.tuning import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])


def _positive_float(text: str) -> float:
    return _float_in(text, "x>0", lambda x: x > 0)


def _dropout(text: str) -> float:
    return _float_in(text, "0<=x<1", lambda x: 0.0 <= x < 1.0)


def _float_in(text: str, rule: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not ok(value):
        raise typer.BadParameter(f"{text} is not in the range {rule}")
    return value


# The valid range of every numeric flag that several commands (or schemes) take: the one place.
RANGES: dict[str, dict[str, Any]] = {
    "--lr": {"parser": _positive_float},
    "--alpha": {"parser": _positive_float},
    "--dropout": {"parser": _dropout},
    "--rank": {"min": 1},
    "--batch-size": {"min": 1},
    "--max-len": {"min": 2},
    "--seed": {"min": 0},
    "--limit": {"min": 1},
    "--max-steps": {"min": 1},
    "--checkpoint-every": {"min": 0},
    "--layers": {"min": 1},
    "--epochs": {"min": 1},
    "--repeats": {"min": 1},
    "--workers": {"min": 1, "max": 32},  # p3eft.privtuner.roles.MAX_WORKERS
}


def option(default: Any, flag: str, *aliases: str, help: str) -> Any:  # noqa: A002 - typer's name
    """A typer option for ``flag`` with the range :data:`RANGES` gives it (a KeyError for a flag
    without one: a numeric flag must not slip through unchecked)."""
    return typer.Option(default, flag, *aliases, help=help, **RANGES[flag])


WORKERS = option(
    1,
    "--workers",
    help="Processes per data-owner session for the model owner's plaintext-weight products (1: none; "
    "each holds that session's public keys, about 1 GB).",
)

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
MAX_STEPS = option(100, "--max-steps", help="Optimiser steps in total (a resumed run counts earlier ones).")
TRAIN_LIMIT = option(None, "--limit", help="Use only the first N training examples.")
CHECKPOINT_EVERY = option(0, "--checkpoint-every", help="Checkpoint every K steps (0: only at the end).")
LR = option(3e-5, "--lr", help="Learning rate (ObfuscaTune's appendix: 3e-5).")
RANK = option(16, "--rank", help="LoRA rank r.")
ALPHA = option(32.0, "--alpha", help="LoRA alpha (the update is scaled by alpha/r).")
DROPOUT = option(0.05, "--dropout", help="LoRA dropout, in [0, 1).")
BATCH_SIZE = option(8, "--batch-size", help="Examples per optimiser step.")
MAX_LEN = option(256, "--max-len", help="Longest training sequence in tokens (cut from the left).")
SEED = option(0, "--seed", help="Seed of the LoRA initialisation, batch order and dropout.")
RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out.")

# --- evaluation ----------------------------------------------------------------------------------
EVAL_LIMIT = option(None, "--limit", help="Score only the first N evaluation examples.")
EVAL_BATCH_SIZE = option(8, "--batch-size", help="Sequences per forward pass while scoring.")
EVAL_MAX_LEN = option(
    1024,
    "--max-len",
    "--max-length",  # the old spelling of `obfuscatune evaluate`, kept as an alias
    help="Longest scored sequence in tokens (context cut from the left).",
)

# --- output --------------------------------------------------------------------------------------
JSON_OUT = typer.Option(None, "--json", help="Also write the results JSON here.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")


def flag_group(arg: str, cls: type, specs: tuple[tuple[str, Any, Any], ...]) -> Callable[[F], F]:
    """Give a command the flags in ``specs`` (name, type, typer option) and hand them to it bundled as
    ``cls(**flags)`` in the parameter ``arg``, so that commands sharing flags do not repeat them."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != arg]
        added = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, t, o in specs
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            group = cls(**{n: kwargs.pop(n) for n, _, _ in specs})
            return fn(**kwargs, **{arg: group})

        command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        del command.__wrapped__  # typer must see the new signature, not fn's
        return command  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class TrainingFlags:
    """The training flags every scheme's ``finetune`` takes."""

    max_steps: int
    limit: int | None
    checkpoint_every: int
    resume: bool
    data_dir: Path | None
    lr: float
    rank: int
    alpha: float
    dropout: float
    batch_size: int
    max_len: int
    seed: int
    json_out: Path | None
    progress: bool

    def config(self, out: Path, target_modules: list[str] | None = None) -> TrainConfig:
        """The training configuration (the flags' ranges were checked while parsing)."""
        from p3eft.tuning import TrainConfig

        return TrainConfig(
            lr=self.lr,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=target_modules,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            max_len=self.max_len,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            out_dir=str(out),
        )

    def run_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every scheme's ``finetune`` function takes from these flags."""
        return {
            "limit": self.limit,
            "data_dir": self.data_dir,
            "resume": self.resume,
            "progress": self.progress,
        }


@dataclass(frozen=True)
class EvalFlags:
    """The evaluation flags every scheme's ``evaluate`` takes."""

    adapter: Path | None
    limit: int | None
    data_dir: Path | None
    batch_size: int
    max_len: int
    json_out: Path | None
    progress: bool

    def run_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every scheme's ``evaluate`` function takes from these flags."""
        return {
            "adapter": self.adapter,
            "limit": self.limit,
            "data_dir": self.data_dir,
            "batch_size": self.batch_size,
            "max_length": self.max_len,
            "progress": self.progress,
        }


with_training_flags = flag_group(
    "flags",
    TrainingFlags,
    (
        ("max_steps", int, MAX_STEPS),
        ("limit", int | None, TRAIN_LIMIT),
        ("checkpoint_every", int, CHECKPOINT_EVERY),
        ("resume", bool, RESUME),
        ("data_dir", Path | None, DATA_DIR),
        ("lr", float, LR),
        ("rank", int, RANK),
        ("alpha", float, ALPHA),
        ("dropout", float, DROPOUT),
        ("batch_size", int, BATCH_SIZE),
        ("max_len", int, MAX_LEN),
        ("seed", int, SEED),
        ("json_out", Path | None, JSON_OUT),
        ("progress", bool, PROGRESS),
    ),
)
with_eval_flags = flag_group(
    "flags",
    EvalFlags,
    (
        ("adapter", Path | None, ADAPTER),
        ("limit", int | None, EVAL_LIMIT),
        ("data_dir", Path | None, DATA_DIR),
        ("batch_size", int, EVAL_BATCH_SIZE),
        ("max_len", int, EVAL_MAX_LEN),
        ("json_out", Path | None, JSON_OUT),
        ("progress", bool, PROGRESS),
    ),
)


def check_json_out(path: Path | None) -> None:
    """Refuse a ``--json`` path that cannot be written, before any model loads."""
    if path is not None:
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
