"""`p3eft model-owner upload`: attest the enclave, then provision it with a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("upload")
def upload(
    model: str = typer.Option("smollm2-135m", "--model", help="Registry name or local model folder."),
    enclave: str = typer.Option(..., "--enclave", help="HOST:PORT of `p3eft serve enclave`."),
    certs: Path = typer.Option(..., "--certs", help="Folder from `p3eft keys init`."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64 (must match the enclave)."),
    chunk_mb: int = typer.Option(32, "--chunk-mb", help="State-dict bytes per provisioning message."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the upload summary here."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Re-provision a live enclave so it draws fresh masks (adapters kept)."
    ),
) -> None:
    """Verify the enclave's attestation, then stream the model's weights to it (never to the cloud)."""
    from p3eft.runtime.model_owner import upload as do_upload

    summary = do_upload(model, enclave, certs, dtype=dtype, chunk_mb=chunk_mb, refresh=refresh)
    typer.echo(
        f"provisioned {summary['model']} ({summary['bytes_sent'] / 2**20:.1f} MiB sent to the attested enclave "
        f"in {summary['seconds']:.1f} s)"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2, default=str))
