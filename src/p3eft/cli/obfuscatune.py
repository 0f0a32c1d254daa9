"""`p3eft obfuscatune ...`: obfuscated fine-tuning and inference with an enclave (thin: parse, call, print)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.errors import P3eftError

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

app = typer.Typer(
    no_args_is_help=True, help="ObfuscaTune: obfuscated fine-tuning and inference with an enclave."
)

MODE_HELP = (
    "strict (ours, default: both sides of every linear masked) or paper (one-sided, as published; protects "
    "neither prompts nor weights against an attacker holding the public model, see docs/obfuscatune.md)."
)
MASKS_HELP = (
    "kron (default: structured, cheap for the enclave), orthogonal, cond:K, naive, kron[:F] or blockperm[:B]."
)


def _settings(mode: str, masks: str, dtype: str = "float32"):
    from p3eft.obfuscatune.enclave import EnclaveSettings
    from p3eft.obfuscatune.masks import parse_masks
    from p3eft.obfuscatune.split import mask_sides

    parse_masks(masks)
    mask_sides(mode, "attn_in")
    if dtype not in ("float32", "float64"):
        raise P3eftError(f"--dtype must be float32 or float64, not {dtype!r}")
    return EnclaveSettings(mode=mode, masks=masks, dtype=dtype)


def _write(payload: dict, json_out: Path | None) -> None:
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, default=str))


@app.command()
def finetune(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: adapter/ (plain PEFT), checkpoints/, results.json."
    ),
    model: str = opt.MODEL,
    dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa or sciq."),
    max_steps: int = opt.MAX_STEPS,
    limit: int | None = opt.TRAIN_LIMIT,
    checkpoint_every: int = opt.CHECKPOINT_EVERY,
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest sealed checkpoint in --out."
    ),
    data_dir: Path | None = opt.DATA_DIR,
    lr: float = opt.LR,
    rank: int = opt.RANK,
    alpha: float = opt.ALPHA,
    dropout: float = opt.DROPOUT,
    batch_size: int = opt.BATCH_SIZE,
    max_len: int = opt.MAX_LEN,
    seed: int = opt.SEED,
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (runs on the untrusted side)."),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    masks: str = typer.Option("kron", "--masks", help=MASKS_HELP),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Enclave/accelerator precision: float32 or float64."
    ),
    enclave: str | None = typer.Option(
        None, "--enclave", help="URL of a networked enclave (default: in-process)."
    ),
    certs: Path | None = typer.Option(None, "--certs", help="Folder with the data owner's TLS certificates."),
    json_out: Path | None = opt.JSON_OUT,
    progress: bool = opt.PROGRESS,
) -> None:
    """Fine-tune with LoRA through the enclave/untrusted-accelerator split; export a plain PEFT adapter."""
    from p3eft.obfuscatune import run

    if optimizer not in ("adamw", "sgd"):
        raise P3eftError(f"--optimizer must be adamw or sgd, not {optimizer!r}")
    cfg = opt.train_config(
        out,
        limit=limit,
        lr=lr,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        batch_size=batch_size,
        max_steps=max_steps,
        max_len=max_len,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    res = run.finetune(
        model,
        dataset,
        out,
        cfg,
        _settings(mode, masks, dtype),
        optimizer=optimizer,
        limit=limit,
        data_dir=data_dir,
        resume=resume,
        enclave_url=enclave,
        certs=certs,
        progress=progress,
    )
    _write(res, json_out)
    r = res["result"]
    weights = "RANDOM weights" if res.get("weights_random") else "real weights"
    typer.echo(
        f"{res['model']} on {res['train']['dataset']} [{weights}, mode {mode}, masks {masks}]: "
        f"{r['steps']} steps, loss {r['first_loss']} -> {r['final_loss']}, {r['seconds_this_run']:.1f} s"
    )
    if "adapter" in res:
        typer.echo(f"adapter (plain coordinates, PEFT): {res['adapter']}")


@app.command()
def evaluate(
    model: str = typer.Option("smollm2-135m", "--model"),
    dataset: str = typer.Option("piqa", "--dataset", help="webqs, obqa, piqa or sciq."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT adapter folder (plain coordinates)."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N eval examples."),
    data_dir: Path | None = typer.Option(None, "--data-dir"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_length: int = typer.Option(1024, "--max-length"),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    masks: str = typer.Option("kron", "--masks", help=MASKS_HELP),
    dtype: str = typer.Option("float32", "--dtype"),
    enclave: str | None = typer.Option(
        None, "--enclave", help="URL of a networked enclave (default: in-process)."
    ),
    certs: Path | None = typer.Option(None, "--certs", help="Folder with the data owner's TLS certificates."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results JSON here."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score a model (optionally with an adapter) through the split, multiple-choice style."""
    from p3eft.obfuscatune import run

    res = run.evaluate(
        model,
        dataset,
        _settings(mode, masks, dtype),
        adapter=adapter,
        limit=limit,
        data_dir=data_dir,
        batch_size=batch_size,
        max_length=max_length,
        enclave_url=enclave,
        certs=certs,
        progress=progress,
    )
    _write(res, json_out)
    weights = "RANDOM weights" if res.get("weights_random") else "real weights"
    typer.echo(
        f"{res['eval']['dataset']} {res['eval']['split']} (n={res['n']}, metric {res['metric']}): "
        f"acc={res['acc']:.4f} acc_norm={res['acc_norm']:.4f} exact_match={res['exact_match']:.4f} "
        f"[{res['model']}, {weights}, obfuscated {mode}/{masks}]"
    )


@app.command()
def export(
    run_dir: Path = typer.Option(..., "--from", help="An in-process `obfuscatune finetune --out` folder."),
    out: Path = typer.Option(..., "--out", help="Where to write the PEFT adapter."),
) -> None:
    """Re-export a run's adapter in plain coordinates from its latest sealed checkpoint."""
    from p3eft.obfuscatune import run

    typer.echo(f"adapter (plain coordinates, PEFT): {run.export(run_dir, out)}")


@app.command()
def verify(
    model: str = typer.Option("smollm2-135m", "--model"),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results JSON here."),
) -> None:
    """Plain vs obfuscated logits on one batch of real text, and the split's parameter shares."""
    from p3eft.obfuscatune import run

    _settings(mode, "orthogonal")
    res = run.verify(model, mode=mode, data_dir=data_dir)
    _write(res, json_out)
    weights = "RANDOM weights (from config)" if res["weights_random"] else "real weights"
    typer.echo(f"{res['model']} [{weights}], mode {mode}, fp32, {res['tokens']} tokens")
    for masks, diff in res["max_abs_logit_diff_by_masks"].items():
        typer.echo(f"  max |logit diff| {masks:>12}: {diff:.3e}")
    typer.echo(
        f"  enclave param share {res['enclave_param_share']:.1%}, untrusted {res['untrusted_param_share']:.1%}"
    )


@app.command()
def info(
    model: str = typer.Option("gpt2-xl", "--model"),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    masks: str = typer.Option("kron", "--masks", help=MASKS_HELP),
    context: int = typer.Option(128, "--context", help="Context length for the attention arithmetic."),
    json_out: Path | None = typer.Option(None, "--json"),
) -> None:
    """Parameter and per-token arithmetic accounting, from the model's actual split (meta device)."""
    from p3eft.obfuscatune import run

    _settings(mode, masks)
    res = run.info(model, mode=mode, masks=masks, context=context)
    _write(res, json_out)
    a = res["arithmetic"]
    typer.echo(
        f"{res['model']} ({res['family']}, {res['layers']} layers), split in mode {mode}, masks {masks}"
    )
    typer.echo(f"  parameters: {res['total_parameters']:,} total")
    typer.echo(f"    enclave   {res['enclave_parameters']:>14,}  {res['enclave_param_share']:6.1%}")
    for k, v in res["enclave_breakdown"].items():
        typer.echo(f"      {k:<32} {v:>14,}")
    typer.echo(f"    untrusted {res['untrusted_parameters']:>14,}  {res['untrusted_param_share']:6.1%}")
    typer.echo(
        f"  arithmetic per token (context {context}): accelerator {a['accelerator_flops_per_token'] / 1e6:.1f} "
        f"MFLOP, enclave {a['enclave_flops_per_token'] / 1e6:.1f} MFLOP ({a['enclave_share']:.1%} of all)"
    )
    typer.echo(
        f"    masking {a['masking_share']:.1%} (= {a['masking_vs_accelerator']:.1%} of the accelerator's), "
        f"LM head {a['lm_head_share']:.1%}, attention {a['attention_share']:.1%}, "
        f"norms/nonlinear {a['norms_nonlinear_share']:.1%}"
    )


@app.command()
def experiment(
    out: Path = typer.Option(..., "--out", help="Folder for results.json, tables.md and the PNG plot."),
    models: str = typer.Option("smollm2-135m", "--models", help="Comma-separated model names."),
    datasets: str = typer.Option("webqs,obqa,piqa,sciq", "--datasets"),
    limit: int | None = typer.Option(300, "--limit", help="Training examples per dataset."),
    eval_limit: int | None = typer.Option(100, "--eval-limit", help="Eval examples per dataset."),
    max_steps: int = typer.Option(20, "--max-steps"),
    lr: float = typer.Option(3e-5, "--lr"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_len: int = typer.Option(128, "--max-len"),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    kappas: str = typer.Option(
        "1,10,100,1000", "--kappas", help="Condition numbers for Table 2 (plus naive)."
    ),
    sweep_datasets: str | None = typer.Option(
        None, "--sweep-datasets", help="Table-2 accuracy only on these datasets (default: all)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    exp_masks: str = typer.Option("kron", "--masks", help="Table 1's ObfuscaTune masks. " + MASKS_HELP),
    defence: str = typer.Option("mix:4", "--defence", help="none or mix:K (default: row mixing, K=4)."),
    cloud_device: str | None = typer.Option(
        None, "--cloud-device", help="Untrusted side's torch device (default: cuda if present, else cpu)."
    ),
) -> None:
    """The paper's Table 1 (Unprotected / ObfuscaTune / naive) and Table 2 (condition-number sweep)."""
    from p3eft.obfuscatune.experiment import ExperimentConfig, run_experiment
    from p3eft.obfuscatune.mixing import parse_defence

    _settings(mode, exp_masks)
    parse_defence(defence)
    cfg = ExperimentConfig(
        models=[m for m in models.split(",") if m],
        datasets=[d for d in datasets.split(",") if d],
        limit=limit,
        eval_limit=eval_limit,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        max_len=max_len,
        mode=mode,
        kappas=[float(k) for k in kappas.split(",") if k],
        data_dir=str(data_dir) if data_dir else None,
        sweep_datasets=[d for d in sweep_datasets.split(",") if d] if sweep_datasets else None,
        masks=exp_masks,
        defence=defence,
        cloud_device=cloud_device,
    )
    res = run_experiment(cfg, out, progress=progress)
    typer.echo(res["markdown"])
    typer.echo(f"wrote {out / 'results.json'}, {out / 'tables.md'}, {out / 'obfuscatune.png'}")
