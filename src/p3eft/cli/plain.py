"""`p3eft finetune` and `p3eft evaluate`: the plaintext LoRA reference (thin: parse, call the library, print)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.errors import P3eftError, UnknownNameError

# transformers 5 deprecation chatter that peft triggers; not actionable for a user of the CLI.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

SCHEMES = ("plain", "obfuscatune", "privtuner")


def _scheme_command(scheme: str) -> str | None:
    """The ``p3eft <scheme> finetune`` command when it exists in this CLI, else None."""
    from p3eft.cli.main import app

    sub = getattr(typer.main.get_command(app), "commands", {}).get(scheme)
    if "finetune" in getattr(sub, "commands", {}):
        return f"p3eft {scheme} finetune"
    return None


def _check_scheme(scheme: str) -> None:
    """``--scheme plain`` runs here; the schemes have their own command group, named when it exists."""
    if scheme == "plain":
        return
    if scheme not in SCHEMES:
        raise UnknownNameError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    command = _scheme_command(scheme)
    if command is None:
        raise P3eftError(f"--scheme {scheme}: {scheme} fine-tuning is not available in this version of p3eft")
    raise P3eftError(f"--scheme {scheme}: use `{command}` (same training flags)")


def register(app: typer.Typer) -> None:
    @app.command()
    def finetune(
        out: Path = typer.Option(..., "--out", help="Output folder: adapter/, checkpoints/, results.json."),
        scheme: str = typer.Option(
            "plain", "--scheme", help="plain (here); obfuscatune and privtuner have their own command groups."
        ),
        model: str = opt.MODEL,
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
        max_steps: int = opt.MAX_STEPS,
        limit: int | None = opt.TRAIN_LIMIT,
        checkpoint_every: int = opt.CHECKPOINT_EVERY,
        resume: bool = opt.RESUME,
        data_dir: Path | None = opt.DATA_DIR,
        lr: float = opt.LR,
        rank: int = opt.RANK,
        alpha: float = opt.ALPHA,
        dropout: float = opt.DROPOUT,
        batch_size: int = opt.BATCH_SIZE,
        max_len: int = opt.MAX_LEN,
        seed: int = opt.SEED,
        target_modules: str | None = typer.Option(
            None,
            "--target-modules",
            help="Comma-separated module names (default: all attention and MLP linears).",
        ),
        json_out: Path | None = opt.JSON_OUT,
        progress: bool = opt.PROGRESS,
    ) -> None:
        """Fine-tune with LoRA (plain reference; the schemes have their own command groups)."""
        _check_scheme(scheme)
        opt.check_json_out(json_out)
        from p3eft.tuning import finetune_plain
        from p3eft.tuning.plain import write_json

        config = opt.train_config(
            out,
            lr=lr,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            batch_size=batch_size,
            max_steps=max_steps,
            max_len=max_len,
            seed=seed,
            checkpoint_every=checkpoint_every,
            target_modules=[m.strip() for m in target_modules.split(",")] if target_modules else None,
        )
        res = finetune_plain(
            model, dataset, out, config, limit=limit, data_dir=data_dir, resume=resume, progress=progress
        )
        if json_out:
            write_json(json_out, res)
        typer.echo(opt.training_line(res, ""))
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        typer.echo(f"adapter: {res.get('adapter', '(not written)')}; results: {out / 'results.json'}")

    @app.command()
    def evaluate(
        model: str = opt.MODEL,
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
        adapter: Path | None = opt.ADAPTER,
        limit: int | None = opt.EVAL_LIMIT,
        data_dir: Path | None = opt.DATA_DIR,
        batch_size: int = opt.EVAL_BATCH_SIZE,
        max_len: int = opt.EVAL_MAX_LEN,
        json_out: Path | None = opt.JSON_OUT,
        progress: bool = opt.PROGRESS,
    ) -> None:
        """Evaluate a model (optionally with an adapter) on a dataset's evaluation split."""
        opt.check_json_out(json_out)
        from p3eft.tuning import evaluate as run_eval
        from p3eft.tuning.plain import write_json

        res = run_eval(
            model,
            dataset,
            adapter=adapter,
            limit=limit,
            data_dir=data_dir,
            batch_size=batch_size,
            max_length=max_len,
            progress=progress,
        )
        typer.echo(opt.evaluation_line(res))
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        if json_out:
            typer.echo(f"results: {write_json(json_out, res)}")
        else:
            keys = (*res["metrics"], "n", "weights_random")
            typer.echo(json.dumps({k: res[k] for k in keys}))
