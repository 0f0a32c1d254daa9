"""`p3eft finetune` and `p3eft evaluate`: the plaintext LoRA reference (thin: parse, call the library, print)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.errors import P3eftError, UnknownNameError

_OTHER_SCHEMES = {
    "obfuscatune": "use `p3eft obfuscatune finetune` for ObfuscaTune",
    "privtuner": "use `p3eft privtuner finetune` for PrivTuner",
}


# transformers 5 deprecation chatter that peft triggers; not actionable for a user of the CLI.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _check_scheme(scheme: str) -> None:
    if scheme == "plain":
        return
    if scheme in _OTHER_SCHEMES:
        raise P3eftError(f"--scheme {scheme}: {_OTHER_SCHEMES[scheme]}")
    raise UnknownNameError(f"unknown scheme {scheme!r}; known: plain, obfuscatune, privtuner")


def _summary(res: dict) -> str:
    weights = "RANDOM weights" if res["weights_random"] else "real weights"
    ev = res["eval"]
    if "accuracy" in res:
        score = f"accuracy={res['accuracy']:.4f}"
    else:
        names = [res["metric"]] + [m for m in ("acc", "acc_norm", "exact_match") if m != res["metric"]]
        score = " ".join(f"{m}={res[m]:.4f}" for m in names)
    return f"{ev['dataset']} {ev['split']} (n={res['n']}, metric {res['metric']}): {score} [{res['model']}, {weights}]"


def register(app: typer.Typer) -> None:
    @app.command()
    def finetune(
        out: Path = typer.Option(..., "--out", help="Output folder: adapter/, checkpoints/, results.json."),
        scheme: str = typer.Option(
            "plain", "--scheme", help="plain (here); obfuscatune/privtuner have their own groups."
        ),
        model: str = opt.MODEL,
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
        max_steps: int = opt.MAX_STEPS,
        limit: int | None = opt.TRAIN_LIMIT,
        checkpoint_every: int = opt.CHECKPOINT_EVERY,
        resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
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
            limit=limit,
            target_modules=[m.strip() for m in target_modules.split(",")] if target_modules else None,
        )
        res = finetune_plain(
            model, dataset, out, config, limit=limit, data_dir=data_dir, resume=resume, progress=progress
        )
        r = res["result"]
        if json_out:
            write_json(json_out, res)
        weights = "RANDOM weights" if res["weights_random"] else "real weights"
        typer.echo(
            f"trained {res['model']} ({weights}) on {res['train']['dataset']} for {r['steps']} steps "
            f"(resumed from {r['resumed_from']}): loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}, "
            f"{r['tokens_per_second']:.0f} tokens/s"
        )
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        typer.echo(f"adapter: {res.get('adapter', '(not written)')}; results: {out / 'results.json'}")

    @app.command()
    def evaluate(
        model: str = typer.Option("smollm2-135m", "--model", help="Registry name or local model folder."),
        dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa, sciq or sst2."),
        adapter: Path | None = typer.Option(
            None, "--adapter", help="A PEFT adapter folder (from finetune's --out/adapter)."
        ),
        limit: int | None = typer.Option(None, "--limit", help="Score only the first N evaluation examples."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Dataset folder (default: $P3EFT_DATA, ../shared/data)."
        ),
        batch_size: int = typer.Option(8, "--batch-size"),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results JSON here."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Evaluate a model (optionally with an adapter) on a dataset's evaluation split."""
        from p3eft.tuning import evaluate as run_eval
        from p3eft.tuning.plain import write_json

        if limit is not None and limit <= 0:
            raise P3eftError(f"--limit must be a positive number of examples, got {limit}")
        res = run_eval(
            model,
            dataset,
            adapter=adapter,
            limit=limit,
            data_dir=data_dir,
            batch_size=batch_size,
            progress=progress,
        )
        typer.echo(_summary(res))
        for note in res["notes"]:
            typer.echo(f"note: {note}")
        if json_out:
            typer.echo(f"results: {write_json(json_out, res)}")
        else:
            keys = ("acc", "acc_norm", "exact_match", "accuracy", "n", "weights_random")
            typer.echo(json.dumps({k: res[k] for k in keys if k in res}))
