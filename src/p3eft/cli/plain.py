"""`p3eft finetune` and `p3eft evaluate`: placeholder until the foundation's plaintext reference lands."""

import typer

from p3eft.errors import P3eftError


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def finetune() -> None:
        """Fine-tune with LoRA (plain reference or a privacy scheme)."""
        raise P3eftError("`p3eft finetune` waits for the plaintext LoRA reference (foundation).")

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def evaluate() -> None:
        """Evaluate a model (optionally with an adapter) on a dataset."""
        raise P3eftError("`p3eft evaluate` waits for the plaintext LoRA reference (foundation).")
