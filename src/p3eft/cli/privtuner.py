"""`p3eft privtuner finetune | evaluate | verify | bench`: encrypted LoRA fine-tuning (thin: parse, call, print).

The data owner's commands. The model owner runs in this process by default; ``--server HOST:PORT
--certs DIR`` reaches a model owner started with ``p3eft serve privtuner-model-owner`` instead (then the
model flags are the server's). Bad input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from p3eft.cli import options as opt
from p3eft.errors import P3eftError
from p3eft.fhe.galois import ROTATION_KEY_MODES
from p3eft.outputs import check_writable_dir

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

app = typer.Typer(no_args_is_help=True, help="PrivTuner: encrypted (CKKS) LoRA fine-tuning and inference.")

MODEL = typer.Option("minilm-l6", "--model", help="minilm-l6 (real weights), bert-tiny (cost shape) or tiny.")
# numeric flags: PrivTuner's own defaults, the ranges every scheme shares (cli/options.py)
LAYERS = opt.option(2, "--layers", help="Keep the encoder's first K layers (all adapted).")
MAX_LEN = opt.option(64, "--max-len", help="Tokens per example (longer sentences are cut).")
RANK = opt.option(8, "--rank", help="LoRA rank.")
ALPHA = opt.option(8.0, "--alpha", help="LoRA alpha.")
LR = opt.option(
    1e-3,
    "--lr",
    help="SGD learning rate (batch 1; 1e-3 chosen for the standardized head on held-out SST-2 training text).",
)
PARAM_SET = typer.Option(None, "--param-set", help="CKKS chain, e.g. PT16384 (default: the model's).")


def _one_of(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise typer.BadParameter(f"{text!r} is not one of {', '.join(choices)}")
    return text


ROTATION_KEYS = typer.Option(
    "exact",
    "--rotation-keys",
    parser=lambda text: _one_of(text, ROTATION_KEY_MODES),
    help="Galois keys the data owner makes: exact (one per rotation step) or pow2 (signed powers of two; "
    "fewer keys to send and hold, slower rotations).",
)
SEED = opt.option(0, "--seed", help="Seed of the model owner's LoRA initialisation and the data order.")
HEAD_STD = typer.Option(
    True,
    "--head-standardize/--no-head-standardize",
    help="Standardize the classifier's input by public calibrated constants (ours; SGD learns with it).",
)
SERVER = typer.Option(None, "--server", help="HOST:PORT of `p3eft serve privtuner-model-owner`.")
CERTS = typer.Option(
    None,
    "--certs",
    help="The data owner's own key folder, DIR/data-owner from `p3eft keys init DIR` (with --server).",
)


def _write(payload: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))


def _network(server: str | None, certs: Path | None) -> None:
    if server is None:
        if certs is not None:
            raise P3eftError("--certs is only used with --server HOST:PORT")
        return
    from p3eft.runtime.client import parse_url

    parse_url(server)
    if certs is None:
        raise P3eftError("--server needs --certs (DIR/data-owner from `p3eft keys init DIR`)")
    if not certs.is_dir():
        raise P3eftError(f"--certs {certs} is not a folder; run `p3eft keys init {certs}` first")


def _settings(**kw: Any) -> Any:
    from p3eft.privtuner.wiring import settings

    return settings(**kw)


@dataclass(frozen=True)
class TuningFlags:
    """The model and LoRA flags that finetune, evaluate and verify share."""

    model: str
    layers: int
    max_len: int
    rank: int
    alpha: float
    lr: float
    param_set: str | None
    seed: int
    head_standardize: bool
    rotation_keys: str

    def settings(self) -> Any:
        return _settings(**asdict(self))


with_tuning_flags = opt.flag_group(
    "tuning",
    TuningFlags,
    (
        ("model", str, MODEL),
        ("layers", int, LAYERS),
        ("max_len", int, MAX_LEN),
        ("rank", int, RANK),
        ("alpha", float, ALPHA),
        ("lr", float, LR),
        ("param_set", str | None, PARAM_SET),
        ("seed", int, SEED),
        ("head_standardize", bool, HEAD_STD),
        ("rotation_keys", str, ROTATION_KEYS),
    ),
)


@app.command()
@with_tuning_flags
def finetune(
    tuning: TuningFlags,
    out: Path = typer.Option(..., "--out", help="Output folder: results.json, adapter/ (with --end export)."),
    limit: int = opt.option(64, "--limit", help="Train on the first N SST-2 training examples."),
    epochs: int = opt.option(1, "--epochs", help="Passes over the training examples."),
    eval_limit: int = typer.Option(
        0, "--eval-limit", min=0, help="Then evaluate encrypted on the first N dev examples (same session)."
    ),
    end: str = typer.Option(
        "export",
        "--end",
        help="export: the data owner decrypts adapter + head into a PEFT folder; "
        "encrypted: the adapter stays encrypted (inference stays two-party: keep a checkpoint, then "
        "`evaluate --checkpoint OUT/checkpoint`).",
    ),
    data_dir: Path | None = opt.DATA_DIR,
    server: str | None = SERVER,
    certs: Path | None = CERTS,
    json_out: Path | None = opt.JSON_OUT,
    progress: bool = opt.PROGRESS,
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run checkpointed in OUT/checkpoint (same settings; next step)."
    ),
) -> None:
    """Fine-tune LoRA + head under encryption on SST-2 (one SGD step per example).

    With $P3EFT_CHECKPOINT_PASSPHRASE set, a sealed checkpoint is kept in OUT/checkpoint after every
    step, so a crash of either party loses at most one step (continue with --resume)."""
    from p3eft.privtuner.checkpoint import PASSPHRASE_ENV, run_checkpoint
    from p3eft.privtuner.protocol import EndPolicy

    try:
        policy = EndPolicy(end)
    except ValueError:
        raise P3eftError(f"--end must be export or encrypted, not {end!r}") from None
    _network(server, certs)
    check_writable_dir(out)  # outputs before anything loads: a bad --out or --json fails in a second
    opt.check_json_out(json_out)
    cfg = tuning.settings()
    from p3eft.privtuner.workflows import finetune as run

    checkpoint = run_checkpoint(out / "checkpoint", resume)
    if checkpoint is None:
        lost = " and the encrypted adapter ends with the session" if policy is EndPolicy.ENCRYPTED else ""
        typer.echo(
            f"p3eft: note: no checkpoints{lost} (set {PASSPHRASE_ENV} to keep one after every step)", err=True
        )
    res = run(
        cfg,
        out,
        limit=limit,
        epochs=epochs,
        eval_limit=eval_limit,
        policy=policy,
        data_dir=data_dir,
        server=server,
        certs=certs,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    _write(res, json_out)
    losses = res["train"]["losses"]
    typer.echo(
        f"trained {res['model']['name']} ({res['model']['layers']} layers) under encryption on {len(losses)} "
        f"examples: loss {losses[0]:.4f} -> {losses[-1]:.4f}; {res['totals']['bytes_up'] / 1e6:.1f} MB up, "
        f"{res['totals']['bytes_down'] / 1e6:.1f} MB down, {res['totals']['refresh_round_trips']} refreshes"
    )
    if "eval" in res:
        typer.echo(
            f"encrypted dev accuracy on {res['eval']['examples']} examples: {res['eval']['accuracy']:.4f}"
        )
    if "adapter" in res:
        kept = res["adapter"]
    elif checkpoint is not None:
        kept = f"encrypted, in {checkpoint.folder} (two-party inference: evaluate --checkpoint {checkpoint.folder})"
    else:
        kept = "encrypted, discarded with the session (no checkpoint)"
    typer.echo(f"adapter: {kept}; results: {out / 'results.json'}")


@app.command()
@with_tuning_flags
def evaluate(
    tuning: TuningFlags,
    adapter: Path | None = typer.Option(
        None, "--adapter", help="An exported PEFT adapter folder: plaintext evaluation with peft."
    ),
    limit: int = opt.option(200, "--limit", help="Evaluate on the first N SST-2 dev examples."),
    train_limit: int = typer.Option(
        0,
        "--train-limit",
        min=0,
        help="Encrypted mode: first train encrypted on N examples in the same session.",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Encrypted mode: the trained, still encrypted adapter of a finetune run (its OUT/checkpoint; "
        "needs the run's passphrase in $P3EFT_CHECKPOINT_PASSPHRASE).",
    ),
    data_dir: Path | None = opt.DATA_DIR,
    server: str | None = SERVER,
    certs: Path | None = CERTS,
    json_out: Path | None = opt.JSON_OUT,
    progress: bool = opt.PROGRESS,
) -> None:
    """Evaluate on SST-2 dev: encrypted two-party inference, or plaintext with an exported adapter."""
    if adapter is not None and (server is not None or train_limit or checkpoint is not None):
        raise P3eftError(
            "--adapter evaluates in plaintext: it takes no --server, --train-limit or --checkpoint"
        )
    if checkpoint is not None and train_limit:
        raise P3eftError("--checkpoint evaluates a trained adapter: it takes no --train-limit")
    _network(server, certs)
    opt.check_json_out(json_out)
    from p3eft.privtuner import workflows
    from p3eft.privtuner.checkpoint import run_checkpoint

    if adapter is not None:
        res = workflows.evaluate_exported(adapter, limit=limit, data_dir=data_dir, progress=progress)
        how = "plaintext, exported adapter"
    else:
        cfg = tuning.settings()
        res = workflows.evaluate_encrypted(
            cfg,
            limit=limit,
            train_limit=train_limit,
            checkpoint=None if checkpoint is None else run_checkpoint(checkpoint, resume=True),
            data_dir=data_dir,
            server=server,
            certs=certs,
            progress=progress,
        )
        how = "encrypted, two-party"
    _write(res, json_out)
    typer.echo(
        f"SST-2 dev accuracy ({how}) on {res['eval']['examples']} examples: {res['eval']['accuracy']:.4f}"
    )


@app.command()
@with_tuning_flags
def verify(
    tuning: TuningFlags,
    data_dir: Path | None = opt.DATA_DIR,
    json_out: Path | None = opt.JSON_OUT,
    progress: bool = opt.PROGRESS,
) -> None:
    """One encrypted forward pass and one encrypted training step on two real SST-2 examples, checked
    against the approximate twin, with the transcript audit."""
    opt.check_json_out(json_out)
    cfg = tuning.settings()
    from p3eft.privtuner.workflows import verify as run

    res = run(cfg, data_dir=data_dir, progress=progress)
    _write(res, json_out)
    typer.echo(
        f"logit_max_abs_diff {res['logit_max_abs_diff']:.2e}, step_max_abs_diff {res['step_max_abs_diff']:.2e}, "
        f"model_owner_saw_plaintext {str(res['model_owner_saw_plaintext']).lower()}, {res['seconds']:.1f} s, "
        f"{res['refresh_round_trips']} refreshes, {res['bytes_up'] / 1e6:.1f} MB up, "
        f"{res['bytes_down'] / 1e6:.1f} MB down: {'PASS' if res['pass'] else 'FAIL'}"
    )
    if not res["pass"]:
        raise typer.Exit(1)


@app.command()
def bench(
    json_out: Path = typer.Option(..., "--json", help="Write the step-cost file here."),
    model: str = typer.Option("bert-tiny", "--model", help="minilm-l6, bert-tiny or tiny."),
    layers: int = LAYERS,
    max_len: int = MAX_LEN,
    rank: int = RANK,
    alpha: float = ALPHA,
    param_sets: str | None = typer.Option(
        None, "--param-sets", help="Comma-separated CKKS chains (default: every PrivTuner set that fits)."
    ),
    repeats: int = opt.option(1, "--repeats", help="Steps and inferences measured per set (median)."),
    workers: int = opt.WORKERS,
    seed: int = SEED,
    rotation_keys: str = ROTATION_KEYS,
    data_dir: Path | None = opt.DATA_DIR,
    progress: bool = opt.PROGRESS,
) -> None:
    """Measure one encrypted training step and one inference per parameter set; write the step-cost file
    that `p3eft wireless run --costs FILE` reads. With --workers N the model owner runs its products on
    a pool of N processes (the file records it; its CPU seconds include the workers')."""
    opt.check_json_out(json_out)
    names = [s.strip() for s in param_sets.split(",")] if param_sets else None
    if names is not None and not all(names):
        raise P3eftError("--param-sets has an empty name")
    from p3eft.privtuner.workflows import bench as run

    res = run(
        model=model,
        layers=layers,
        max_len=max_len,
        rank=rank,
        alpha=alpha,
        param_sets=names,
        repeats=repeats,
        seed=seed,
        data_dir=data_dir,
        progress=progress,
        workers=workers,
        rotation_keys=rotation_keys,
    )
    _write(res["costs"], json_out)
    typer.echo(res["table"])
    typer.echo(f"step costs: {json_out}")
