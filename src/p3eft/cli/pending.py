"""Command groups whose capability has not landed yet say so instead of crashing."""

from __future__ import annotations

import typer

from p3eft.errors import P3eftError


def pending_group(name: str, waits_for: str) -> typer.Typer:
    """A command group that explains which capability it is waiting for."""
    app = typer.Typer(help=f"(not available yet: waits for {waits_for})", no_args_is_help=False)

    @app.callback(invoke_without_command=True)
    def _pending(ctx: typer.Context) -> None:
        raise P3eftError(f"`p3eft {name}` is not available yet: it waits for {waits_for}.")

    return app
