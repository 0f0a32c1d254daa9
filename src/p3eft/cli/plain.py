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
    @opt.with_training_flags
    def finetune(
        flags: opt.TrainingFlags,
        out: Path = typer.Option(..., "--out", help="Output folder: adapter/, checkpoints/, results.json."),
        scheme: str = typer.Option(
            "plain", "--scheme", help="plain (here); obfuscatune and privtuner have their own command groups."
        ),
        model: str = opt.MODEL,
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
        target_modules: str | None = typer.Option(
            None,
            "--target-modules",
            help="Comma-separated module names (default: all attention and MLP linears).",
        ),
    ) -> None:
        """Fine-tune with LoRA (plain reference; the schemes have their own command groups)."""
        _check_scheme(scheme)
        opt.check_json_out(flags.json_out)
        from p3eft.tuning import finetune_plain
        from p3eft.tuning.plain import write_json

        targets = opt.name_list(target_modules) if target_modules else None
        res = finetune_plain(model, dataset, out, flags.config(out, targets), **flags.run_kwargs())
        if flags.json_out:
            write_json(flags.json_out, res)
        typer.echo(opt.training_line(res, ""))
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        typer.echo(f"adapter: {res.get('adapter', '(not written)')}; results: {out / 'results.json'}")

    @app.command()
    @opt.with_eval_flags
    def evaluate(
        flags: opt.EvalFlags,
        model: str = opt.MODEL,
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
    ) -> None:
        """Evaluate a model (optionally with an adapter) on a dataset's evaluation split."""
        opt.check_json_out(flags.json_out)
        from p3eft.tuning import evaluate as run_eval
        from p3eft.tuning.plain import write_json

        res = run_eval(model, dataset, **flags.run_kwargs())
        typer.echo(opt.evaluation_line(res))
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        if flags.json_out:
            typer.echo(f"results: {write_json(flags.json_out, res)}")
        else:
            keys = (*res["metrics"], "n", "weights_random")
            typer.echo(json.dumps({k: res[k] for k in keys}))
