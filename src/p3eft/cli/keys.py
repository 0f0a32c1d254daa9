"""`p3eft keys`: development CA and per-party certificates for mutual TLS."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("init")
def init(
    directory: Path = typer.Argument(..., help="Folder for ca/ and one key folder per party."),
    force: bool = typer.Option(False, "--force", help="Replace the keys already in DIRECTORY."),
    data_owners: int = typer.Option(
        1, "--data-owners", help="How many data-owner identities (data-owner, data-owner-2, ...)."
    ),
    host: list[str] = typer.Option(
        [], "--host", help="Extra DNS name or IP address for the certificates (repeatable; default loopback)."
    ),
) -> None:
    """Create a development CA and one key folder per party (each holds only that party's keys)."""
    from p3eft.runtime.pki import init_keys, party_names

    parties = party_names(data_owners)
    written = init_keys(directory, data_owners=data_owners, force=force, hosts=tuple(host))
    typer.echo(
        f"wrote {len(written)} files to {directory}: ca/ and one folder per party ({', '.join(parties)})"
    )
    typer.echo(
        f"give each party only its own folder, e.g. --certs {directory}/cloud; keep {directory}/ca offline"
    )
