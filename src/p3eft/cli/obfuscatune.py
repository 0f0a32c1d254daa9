"""`p3eft obfuscatune ...`: obfuscated fine-tuning and inference with an enclave (thin: parse, call, print)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
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
# the enclave's DEFAULT_MASKS, spelled here so that building the CLI does not import torch (a test keeps
# the two equal)
MASKS = "kron:12"
MASKS_HELP = (
    f"{MASKS} (default: Kronecker factors <= 12, structured, cheap for the enclave), orthogonal, cond:K,"
    " naive, kron[:F] (F: largest factor, 16 if omitted) or blockperm[:B]."
)
DTYPE_HELP = "Enclave/accelerator precision: float32 or float64."
# the enclave's DEFAULT_DEFENCE, spelled here so that building the CLI does not import torch (a test
# keeps the two equal)
DEFENCE = "mix:4+fill"
DEFENCE_HELP = (
    f"{DEFENCE} (default: row mixing, every call's rows span the width), mix:K (row mixing only: cheaper "
    "for short calls, but they leak to known text, see docs/obfuscatune.md) or none."
)


def _settings(mode: str, masks: str, dtype: str = "float32", defence: str = DEFENCE):
    from p3eft.obfuscatune.enclave import EnclaveSettings
    from p3eft.obfuscatune.masks import parse_masks
    from p3eft.obfuscatune.mixing import parse_defence
    from p3eft.obfuscatune.split import mask_sides

    parse_masks(masks)
    parse_defence(defence)
    mask_sides(mode, "attn_in")
    if dtype not in ("float32", "float64"):
        raise P3eftError(f"--dtype must be float32 or float64, not {dtype!r}")
    return EnclaveSettings(mode=mode, masks=masks, dtype=dtype, defence=defence)


ENCLAVE_OWNED = ("rank", "alpha", "dropout", "mode", "masks", "dtype", "defence")
EXPECT_HELP = (
    "With --enclave: KEY=VALUE[,...] the enclave's attested configuration must show "
    f"(default mode=strict,masks={MASKS},defence={DEFENCE},seed=random)."
)


def _refuse_enclave_owned(ctx: typer.Context, enclave: str | None) -> None:
    """With --enclave the enclave's attested configuration applies: flags that set it are refused."""
    if not enclave:
        return
    given = [
        f"--{name}"
        for name in ENCLAVE_OWNED
        if name in ctx.params
        # by name: typer vendors its own click, whose ParameterSource is not click's
        and getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    ]
    if given:
        raise P3eftError(
            f"{', '.join(given)} cannot apply with --enclave: the enclave's attested configuration sets "
            "them (use --expect KEY=VALUE to require a value)"
        )


def _label(res: dict, obf: MaskFlags) -> str:
    """The configuration as the enclave attested it (networked), or as run (in-process)."""
    att = res.get("attested")
    if att:
        return (
            f", attested mode {att.get('mode')}, masks {att.get('masks')}, defence {att.get('defence')},"
            f" dtype {att.get('dtype')}, "
            f"r {att.get('lora_r')}"
        )
    return obf.label()


def _write(payload: dict, json_out: Path | None) -> None:
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, default=str))


@dataclass(frozen=True)
class MaskFlags:
    """How the enclave obfuscates: the flags ``finetune`` and ``evaluate`` share."""

    mode: str
    masks: str
    dtype: str
    defence: str

    def settings(self):
        return _settings(self.mode, self.masks, self.dtype, self.defence)

    def label(self) -> str:
        return f", obfuscated {self.mode}/{self.masks}/{self.defence}"


with_mask_flags = opt.flag_group(
    "obf",
    MaskFlags,
    (
        ("mode", str, typer.Option("strict", "--mode", help=MODE_HELP)),
        ("masks", str, typer.Option(MASKS, "--masks", help=MASKS_HELP)),
        ("dtype", str, typer.Option("float32", "--dtype", help=DTYPE_HELP)),
        ("defence", str, typer.Option(DEFENCE, "--defence", help=DEFENCE_HELP)),
    ),
)


@app.command()
@with_mask_flags
@opt.with_training_flags
def finetune(
    ctx: typer.Context,
    flags: opt.TrainingFlags,
    obf: MaskFlags,
    out: Path = typer.Option(
        ..., "--out", help="Output folder: adapter/ (plain PEFT), checkpoints/, results.json."
    ),
    model: str = opt.MODEL,
    dataset: str = opt.MC_DATASET,
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (runs on the untrusted side)."),
    enclave: str | None = typer.Option(
        None, "--enclave", help="URL of a networked enclave (default: in-process)."
    ),
    certs: Path | None = typer.Option(None, "--certs", help="The data owner's key folder (DIR/data-owner)."),
    expect: list[str] = typer.Option([], "--expect", help=EXPECT_HELP),
) -> None:
    """Fine-tune with LoRA through the enclave/untrusted-accelerator split; export a plain PEFT adapter."""
    _refuse_enclave_owned(ctx, enclave)
    if optimizer not in ("adamw", "sgd"):
        raise P3eftError(f"--optimizer must be adamw or sgd, not {optimizer!r}")
    settings = obf.settings()
    opt.check_json_out(flags.json_out)
    from p3eft.obfuscatune import run

    res = run.finetune(
        model,
        dataset,
        out,
        flags.config(out),
        settings,
        optimizer=optimizer,
        enclave_url=enclave,
        certs=certs,
        expect=expect,
        **flags.run_kwargs(),
    )
    _write(res, flags.json_out)
    typer.echo(opt.training_line(res, _label(res, obf)))
    if "adapter" in res:
        typer.echo(f"adapter (plain coordinates, PEFT): {res['adapter']}")


@app.command()
@with_mask_flags
@opt.with_eval_flags
def evaluate(
    ctx: typer.Context,
    flags: opt.EvalFlags,
    obf: MaskFlags,
    model: str = opt.MODEL,
    dataset: str = opt.MC_DATASET,
    enclave: str | None = typer.Option(
        None, "--enclave", help="URL of a networked enclave (default: in-process)."
    ),
    certs: Path | None = typer.Option(None, "--certs", help="The data owner's key folder (DIR/data-owner)."),
    expect: list[str] = typer.Option([], "--expect", help=EXPECT_HELP),
) -> None:
    """Score a model (optionally with an adapter) through the split, multiple-choice style.

    With --enclave the evaluation runs in a job of its own on the enclave: an --adapter is imported
    there, never into another run's job."""
    _refuse_enclave_owned(ctx, enclave)
    settings = obf.settings()
    opt.check_json_out(flags.json_out)
    from p3eft.obfuscatune import run

    res = run.evaluate(
        model,
        dataset,
        settings,
        enclave_url=enclave,
        certs=certs,
        expect=expect,
        **flags.run_kwargs(),
    )
    _write(res, flags.json_out)
    typer.echo(opt.evaluation_line(res, _label(res, obf)))
    for note in res["notes"]:
        typer.echo(f"note: {note}")


@app.command()
def export(
    run_dir: Path = typer.Option(..., "--from", help="An in-process `obfuscatune finetune --out` folder."),
    out: Path = typer.Option(..., "--out", help="A new folder for the PEFT adapter."),
) -> None:
    """Write a run's adapter in plain coordinates (copied if finetune wrote it; else from the sealed checkpoint)."""
    from p3eft.obfuscatune import run

    typer.echo(f"adapter (plain coordinates, PEFT): {run.export(run_dir, out)}")


@app.command()
def verify(
    model: str = opt.MODEL,
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    masks: str = typer.Option(
        "orthogonal,naive",
        "--masks",
        help="Comma-separated mask families to check, one session each (the first is the one reported; "
        "naive is the baseline it is compared with). " + MASKS_HELP,
    ),
    data_dir: Path | None = opt.DATA_DIR,
    json_out: Path | None = opt.JSON_OUT,
    progress: bool = opt.PROGRESS,
) -> None:
    """Plain vs obfuscated logits on one batch of real text, and the split's parameter shares."""
    families = opt.name_list(masks)
    for family in families:
        _settings(mode, family)
    if not families:
        raise P3eftError("--masks needs at least one mask family")
    opt.check_json_out(json_out)
    from p3eft.obfuscatune import run

    res = run.verify(model, mode=mode, data_dir=data_dir, masks=tuple(families), progress=progress)
    _write(res, json_out)
    weights = "RANDOM weights (from config)" if res["weights_random"] else "real weights"
    typer.echo(f"{res['model']} [{weights}], mode {mode}, fp32, {res['tokens']} tokens")
    for family, diff in res["max_abs_logit_diff_by_masks"].items():
        typer.echo(f"  max |logit diff| {family:>12}: {diff:.3e}")
    typer.echo(
        f"  enclave param share {res['enclave_param_share']:.1%}, untrusted {res['untrusted_param_share']:.1%}"
    )


@app.command()
def info(
    model: str = typer.Option("gpt2-xl", "--model", help="Registry name or local model folder."),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    masks: str = typer.Option(MASKS, "--masks", help=MASKS_HELP),
    context: int = typer.Option(128, "--context", min=1, help="Context length for the attention arithmetic."),
    defence: str = typer.Option(DEFENCE, "--defence", help=DEFENCE_HELP),
    rows: int | None = typer.Option(
        None, "--rows-per-call", min=1, help="Rows per call, for the defence's price (default: --context)."
    ),
    head_share: float = typer.Option(
        1.0,
        "--head-share",
        help="Share of positions whose logits the enclave computes: 1 = full logits; training: the "
        "positions the loss covers; generation: one per new token.",
    ),
    json_out: Path | None = opt.JSON_OUT,
) -> None:
    """Parameter and per-token arithmetic accounting, from the model's actual split (meta device)."""
    from p3eft.obfuscatune import run

    if not 0 < head_share <= 1:
        raise P3eftError(f"--head-share must be in (0, 1], got {head_share}")
    _settings(mode, masks, defence=defence)
    res = run.info(
        model,
        mode=mode,
        masks=masks,
        context=context,
        defence=defence,
        rows_per_call=rows,
        head_share=head_share,
    )
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
        f"LM head {a['lm_head_share']:.1%} (at {head_share:.0%} of the positions), attention {a['attention_share']:.1%}, "
        f"norms/nonlinear {a['norms_nonlinear_share']:.1%}"
    )
    typer.echo(
        f"  defence {defence} at {res['rows_per_call']}-row calls: mixing {a['mixing_share']:.1%} of all,"
        f" accelerator x{1 + a['accelerator_noise_overhead']:.2f} of its own work;"
        f" enclave = {a['enclave_vs_useful_accelerator']:.1%} of the accelerator's useful work"
    )


@app.command()
def experiment(
    out: Path = typer.Option(..., "--out", help="Folder for results.json, tables.md and the PNG plot."),
    models: str = typer.Option("smollm2-135m", "--models", help="Comma-separated model names or folders."),
    datasets: str = typer.Option("webqs,obqa,piqa,sciq", "--datasets", help="Comma-separated datasets."),
    limit: int | None = typer.Option(300, "--limit", min=1, help="Training examples per dataset."),
    eval_limit: int | None = typer.Option(100, "--eval-limit", min=1, help="Eval examples per dataset."),
    max_steps: int = typer.Option(20, "--max-steps", min=1, help="Optimiser steps per fine-tuning."),
    lr: float = opt.LR,
    batch_size: int = opt.BATCH_SIZE,
    max_len: int = typer.Option(
        128, "--max-len", min=2, help="Longest training sequence in tokens (cut from the left)."
    ),
    mode: str = typer.Option("strict", "--mode", help=MODE_HELP),
    kappas: str = typer.Option(
        "1,10,100,1000", "--kappas", help="Comma-separated condition numbers (>= 1) for Table 2 (plus naive)."
    ),
    sweep_datasets: str | None = typer.Option(
        None, "--sweep-datasets", help="Table-2 accuracy only on these datasets (default: all)."
    ),
    data_dir: Path | None = opt.DATA_DIR,
    progress: bool = opt.PROGRESS,
    exp_masks: str = typer.Option(MASKS, "--masks", help="Table 1's ObfuscaTune masks. " + MASKS_HELP),
    defence: str = typer.Option(DEFENCE, "--defence", help=DEFENCE_HELP),
    cloud_device: str | None = typer.Option(
        None, "--cloud-device", help="Untrusted side's torch device (default: cuda if present, else cpu)."
    ),
    tables: str = typer.Option(
        "1,2",
        "--tables",
        help="Which tables to run: 1, 2 or 1,2. '2' runs only the Unprotected fine-tuning (its adapter)"
        " and the sweep; put it into full results with 'p3eft obfuscatune merge-sweep'.",
    ),
    columns: str = typer.Option(
        "unprotected,obfuscatune,naive",
        "--columns",
        help="Table 1's columns to run. Without 'unprotected' the obfuscated runs start from the same seeded"
        " adapter without the plain fine-tuning; put them into full results with 'p3eft obfuscatune merge-table1'.",
    ),
) -> None:
    """The paper's Table 1 (Unprotected / ObfuscaTune / naive) and Table 2 (condition-number sweep)."""
    from p3eft.obfuscatune.experiment import ExperimentConfig, run_experiment
    from p3eft.obfuscatune.mixing import parse_defence

    _settings(mode, exp_masks)
    parse_defence(defence)
    from p3eft.outputs import check_writable_dir

    check_writable_dir(out)
    kappa_values = opt.float_list("--kappas", kappas)
    if any(k < 1 for k in kappa_values):
        raise P3eftError(f"--kappas are condition numbers, each >= 1; got {kappas!r}")
    table_list = sorted({t.strip() for t in tables.split(",")})
    if not table_list or any(t not in ("1", "2") for t in table_list):
        raise P3eftError(f"--tables takes 1, 2 or 1,2; got {tables!r}")
    from p3eft.obfuscatune.experiment import TABLE1_COLUMNS

    column_list = opt.name_list(columns)
    if not column_list or any(c not in TABLE1_COLUMNS for c in column_list):
        raise P3eftError(f"--columns takes some of {', '.join(TABLE1_COLUMNS)}; got {columns!r}")
    cfg = ExperimentConfig(
        models=opt.name_list(models),
        datasets=opt.name_list(datasets),
        limit=limit,
        eval_limit=eval_limit,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        max_len=max_len,
        mode=mode,
        kappas=kappa_values,
        data_dir=str(data_dir) if data_dir else None,
        sweep_datasets=opt.name_list(sweep_datasets) if sweep_datasets else None,
        masks=exp_masks,
        defence=defence,
        cloud_device=cloud_device,
        tables=[int(t) for t in table_list],
        columns=[c for c in TABLE1_COLUMNS if c in column_list],
    )
    res = run_experiment(cfg, out, progress=progress)
    typer.echo(res["markdown"])
    typer.echo(f"wrote {out / 'results.json'}, {out / 'tables.md'}, {out / 'obfuscatune.png'}")


@app.command("merge-sweep")
def merge_sweep(
    results: Path = typer.Argument(
        ..., help="Folder of the full results (results.json); rewritten in place."
    ),
    sweeps: list[Path] = typer.Argument(..., help="results.json files of sweep-only runs (--tables 2)."),
    note: str = typer.Option(
        ..., "--note", help="Where and how the sweeps ran (machine, date, commit): shown beside each row."
    ),
) -> None:
    """Replace each swept dataset's Table 2 in RESULTS by the sweep's, with its provenance."""
    from p3eft.obfuscatune.experiment import merge_sweep as merge

    _merge_into(results, sweeps, note, merge)


@app.command("merge-table1")
def merge_table1(
    results: Path = typer.Argument(
        ..., help="Folder of the full results (results.json); rewritten in place."
    ),
    runs: list[Path] = typer.Argument(
        ..., help="results.json files of Table-1 runs (--tables 1 --columns ...)."
    ),
    note: str = typer.Option(
        ..., "--note", help="Where and how the runs ran (machine, date, commit): shown beside each row."
    ),
) -> None:
    """Replace the Table-1 columns each run measured in RESULTS by the run's, with their provenance."""
    from p3eft.obfuscatune.experiment import merge_table1 as merge

    _merge_into(results, runs, note, merge)


def _merge_into(results: Path, parts: list[Path], note: str, merge) -> None:
    """Merge each part's results.json into RESULTS with ``merge`` and rewrite its files."""
    from p3eft.obfuscatune.experiment import write_results

    payload = _read_json(results / "results.json")
    for path in parts:
        try:
            payload = merge(payload, _read_json(path), note)
        except (KeyError, TypeError, AttributeError) as exc:
            raise P3eftError(
                f"{path} or {results / 'results.json'} is not an experiment's results.json ({exc!r})"
            ) from None
    res = write_results(results, payload)
    typer.echo(res["markdown"])
    typer.echo(f"wrote {results / 'results.json'}, {results / 'tables.md'}, {results / 'obfuscatune.png'}")


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise P3eftError(f"cannot read results JSON {path}: {exc}") from exc
