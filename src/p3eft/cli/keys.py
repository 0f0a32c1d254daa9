"""`p3eft keys`: development CA and per-party certificates for mutual TLS."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("init")
def init(
    directory: Path = typer.Argument(
        ..., help="Folder for the CA, the party certificates and platform keys."
    ),
    force: bool = typer.Option(False, "--force", help="Replace the keys already in DIRECTORY."),
    host: list[str] = typer.Option(
        [], "--host", help="Extra DNS name or IP address for the certificates (repeatable; default loopback)."
    ),
) -> None:
    """Create a development CA, one certificate per party and simulated platform keys."""
    from p3eft.runtime.pki import PARTIES, init_keys

    written = init_keys(directory, force=force, hosts=tuple(host))
    typer.echo(f"wrote {len(written)} files to {directory} (parties: {', '.join(PARTIES)})")
    typer.echo("give each party only ca.crt, its own <party>.crt/.key and, verifiers, platform-attest.pub")
