"""`p3eft attack ...`: the untrusted cloud attacks ObfuscaTune, to measure what it leaks (thin: parse, run, print)."""

from __future__ import annotations

from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.outputs import check_writable_dir

app = typer.Typer(
    no_args_is_help=True,
    help="Attack ObfuscaTune from the untrusted side (public model + boundary traffic) and measure the leakage.",
)


def _run(attacks: list[str], **opts) -> None:
    opt.check_json_out(opts["json_out"])  # before the model loads: a bad output fails in a second
    if opts["report"] is not None:
        check_writable_dir(opts["report"], "--report")
    from p3eft.attacks.suite import SuiteConfig, markdown, run_suite, write

    def split(v: str) -> list[str]:
        return [x.strip() for x in v.split(",") if x.strip()]

    cfg = SuiteConfig(
        model=opts["model"],
        modes=split(opts["modes"]),
        masks=split(opts["masks"]),
        defences=split(opts["defences"]),
        deltas=[float(d) for d in split(opts["deltas"])],
        paper_masks=split(opts["paper_masks"]) if opts["paper_masks"] else None,
        attacks=attacks,
        dataset=opts["dataset"],
        prompts=opts["prompts"],
        batch_size=opts["batch_size"],
        max_len=opts["max_len"],
        data_dir=str(opts["data_dir"]) if opts["data_dir"] else None,
        subspace_known=opts["subspace_known"],
        subspace_every=opts["subspace_every"],
    )
    result = run_suite(
        cfg, progress=opts["progress"], on_record=lambda r: write(r, opts["json_out"], opts["report"])
    )
    write(result, opts["json_out"], opts["report"])
    typer.echo(markdown(result))


def _command(name: str, attacks: list[str], doc: str):
    def command(
        model: str = typer.Option("smollm2-135m", "--model", help="A Llama-family model of the registry."),
        modes: str = typer.Option("strict,paper", "--modes", help="Comma-separated: strict, paper."),
        masks: str = typer.Option(
            "orthogonal,cond:100,naive,kron,blockperm:32", "--masks", help="Comma-separated mask families."
        ),
        defences: str = typer.Option(
            "none,mix:4,mix:4+fill", "--defences", help="Comma-separated: none, mix:K, mix:K+fill."
        ),
        deltas: str = typer.Option(
            "0.01,0.1",
            "--deltas",
            help="Relative sizes of the proprietary delta (the first runs every attack, the others the weight attacks).",
        ),
        paper_masks: str | None = typer.Option(
            None, "--paper-masks", help="Mask kinds for paper mode (default: the same as --masks)."
        ),
        dataset: str = typer.Option(
            "sciq", "--dataset", help="Public dataset the victim's prompts come from."
        ),
        prompts: int = typer.Option(
            32, "--prompts", min=1, help="Prompts sent by the data owner (eval contexts)."
        ),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per recorded call."),
        max_len: int = typer.Option(64, "--max-len", min=2, help="Tokens per prompt."),
        data_dir: Path | None = opt.DATA_DIR,
        subspace_known: int | None = typer.Option(
            None,
            "--subspace-known",
            min=1,
            help="Subspace attack: prompts (one per call) whose text the attacker knows (default: all but a quarter).",
        ),
        subspace_every: int = typer.Option(
            4,
            "--subspace-every",
            min=1,
            help="Subspace attack: estimate the mask after every n-th known call.",
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results JSON here."),
        report: Path | None = typer.Option(
            None, "--report", help="Folder for the Markdown table (attacks.md)."
        ),
        progress: bool = opt.PROGRESS,
    ) -> None:
        _run(
            attacks,
            model=model,
            modes=modes,
            masks=masks,
            defences=defences,
            deltas=deltas,
            paper_masks=paper_masks,
            dataset=dataset,
            prompts=prompts,
            batch_size=batch_size,
            max_len=max_len,
            data_dir=data_dir,
            subspace_known=subspace_known,
            subspace_every=subspace_every,
            json_out=json_out,
            report=report,
            progress=progress,
        )

    command.__doc__ = doc
    app.command(name=name)(command)


_command("tokens", ["tokens"], "Prompt recovery from masked activations (norm + Gram matching, Procrustes).")
_command("qkv", ["qkv"], "Prompt recovery from paper mode's clear Q (nearest public query vector).")
_command(
    "weights",
    ["weights"],
    "Weight recovery (Procrustes from the weights alone; known-plaintext mask recovery) as rho.",
)
_command(
    "structure",
    ["structure"],
    "Structure-aware weight recovery for blockperm (block support, per-block Procrustes) and kron masks"
    " (Kronecker labels, nearest Kronecker product) as rho.",
)
_command(
    "static",
    ["static"],
    "Known-plaintext / many-call estimation of the static input mask (rows / calls to 1e-3 mask error).",
)
_command(
    "subspace",
    ["subspace"],
    "Subspace-membership attack through row mixing: the static input mask from the spans of short calls"
    " and known text (known rows to 1e-3), then the later calls' tokens.",
)
_command(
    "covariance",
    ["covariance"],
    "Second-moment attack on the static input mask (eigenvectors of the received rows vs the public model's).",
)
_command("gradients", ["gradients"], "Loss-span leakage from the backward traffic.")
_command(
    "all",
    ["tokens", "qkv", "weights", "structure", "static", "subspace", "covariance", "gradients"],
    "Every attack; the full table and JSON.",
)


def _workloads(spec: str):
    from p3eft.attacks.frontier import Workload
    from p3eft.errors import P3eftError

    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        parts = item.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            out.append(Workload(parts[0], int(parts[1]), float(parts[2])))
        except ValueError:
            raise P3eftError(
                f"--workloads: {item!r} is not NAME:ROWS:HEAD_SHARE (e.g. logits-512:512:1)"
            ) from None
    if not out:
        raise P3eftError("--workloads: at least one NAME:ROWS:HEAD_SHARE is needed")
    return out


@app.command("frontier")
def frontier(
    results: list[Path] = typer.Argument(
        ...,
        help="Attack-suite JSON files (`p3eft attack all --json`); later files fill in or replace earlier ones' figures.",
    ),
    workloads: str = typer.Option(
        "logits-512:512:1,logits-2048:2048:1",
        "--workloads",
        help="Comma-separated NAME:ROWS:HEAD_SHARE to price (rows per call, share of positions with logits);"
        " the first is the frontier's reference.",
    ),
    mode: str = typer.Option("strict", "--mode", help="Only this mode's configurations (strict or paper)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the frontier JSON here."),
    report: Path | None = typer.Option(None, "--report", help="Folder for frontier.md and frontier.png."),
) -> None:
    """Leakage against enclave cost over the measured configurations, and which are on the frontier."""
    opt.check_json_out(json_out)
    if report is not None:
        check_writable_dir(report, "--report")
    from p3eft.attacks.frontier import build_frontier, load_results, markdown, write
    from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, DEFAULT_MODE

    wl = _workloads(workloads)
    points = build_frontier(load_results(results), wl, mode=mode)
    default = (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
    write(points, wl, default, json_out, report)
    typer.echo(markdown(points, wl, default))
