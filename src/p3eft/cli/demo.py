"""`p3eft demo`: placeholder until the networked demo lands."""

import typer

from p3eft.errors import P3eftError


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def demo() -> None:
        """Run the main job end to end on the bundled defaults."""
        raise P3eftError("`p3eft demo` waits for the networked ObfuscaTune demo (parties as processes).")
