"""`p3eft model-owner upload`: attest the enclave, then provision it with a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from p3eft.cli.options import check_json_out

app = typer.Typer(no_args_is_help=True)


@app.command("upload")
def upload(
    model: str = typer.Option("smollm2-135m", "--model", help="Registry name or local model folder."),
    enclave: str = typer.Option(..., "--enclave", help="HOST:PORT of `p3eft serve enclave`."),
    certs: Path = typer.Option(..., "--certs", help="The model owner's key folder (DIR/model-owner)."),
    chunk_mb: int = typer.Option(32, "--chunk-mb", help="State-dict bytes per provisioning message."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the upload summary here."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Re-provision a live enclave so it draws fresh masks (adapters kept)."
    ),
    expect: list[str] = typer.Option(
        [],
        "--expect",
        help="KEY=VALUE[,...] the enclave's attested configuration must show "
        "(default mode=strict,masks=orthogonal,seed=random).",
    ),
) -> None:
    """Verify the enclave's attestation, then stream the model's weights to it (never to the cloud)."""
    from p3eft.obfuscatune.net.model_owner import upload as do_upload

    if chunk_mb < 1:
        from p3eft.errors import P3eftError

        raise P3eftError("--chunk-mb must be at least 1")
    check_json_out(json_out)  # before the model loads and streams
    summary = do_upload(model, enclave, certs, chunk_mb=chunk_mb, refresh=refresh, expect=expect)
    typer.echo(
        f"provisioned {summary['model']} ({summary['bytes_sent'] / 2**20:.1f} MiB sent to the attested enclave "
        f"in {summary['seconds']:.1f} s); enclave attested "
        + ", ".join(f"{k}={v}" for k, v in sorted(summary["attested"].items()))
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2, default=str))
