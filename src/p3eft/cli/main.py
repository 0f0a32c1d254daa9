"""Entry point of the ``p3eft`` command.

Each command group lives in its own module beside this one and is only imported here; the library
does the work. User errors (:class:`p3eft.errors.P3eftError`) end as one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from p3eft.errors import P3eftError

app = typer.Typer(
    name="p3eft",
    help="Privacy-preserving parameter-efficient fine-tuning: PrivTuner (FHE + LoRA) and ObfuscaTune (obfuscation + TEE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from p3eft.cli import (
        attack,
        bench,
        demo,
        keys,
        model_owner,
        models,
        obfuscatune,
        plain,
        privtuner,
        serve,
        wireless,
    )

    plain.register(app)  # `finetune` and `evaluate`
    demo.register(app)
    app.add_typer(models.app, name="models", help="Model registry: list, inspect.")
    app.add_typer(
        obfuscatune.app,
        name="obfuscatune",
        help="ObfuscaTune: obfuscated fine-tuning and inference with an enclave.",
    )
    app.add_typer(privtuner.app, name="privtuner", help="PrivTuner: encrypted (CKKS) LoRA fine-tuning.")
    app.add_typer(
        wireless.app, name="wireless", help="PrivTuner's wireless system: energy/privacy resource allocation."
    )
    app.add_typer(serve.app, name="serve", help="Run a party (enclave, cloud) as its own process.")
    app.add_typer(
        attack.app, name="attack", help="Attack ObfuscaTune from the untrusted side; measure leakage."
    )
    app.add_typer(bench.app, name="bench", help="Measure costs (FHE parameter sets, ...) and write JSON.")
    app.add_typer(keys.app, name="keys", help="Development CA and per-party certificates for mutual TLS.")
    app.add_typer(
        model_owner.app, name="model-owner", help="Model owner's side: upload a model to an attested enclave."
    )


_register()


def _click_errors() -> tuple[type[BaseException], ...]:
    """The base classes of click's errors: typer >= 0.29 vendors its own click, older ones use click's."""
    bases: list[type[BaseException]] = [typer.TyperException]
    try:
        import click

        bases.append(click.ClickException)
    except ImportError:  # pragma: no cover - click is only a dependency of older typer releases
        pass
    return tuple(bases)


def _usage_error(err: BaseException) -> int:
    """A click error (unknown flag, value out of range, missing option) as one line on stderr.

    A bare group (``p3eft models``) is not a mistake: it prints the group's help and exits 0.
    """
    ctx = getattr(err, "ctx", None)
    if type(err).__name__ == "NoArgsIsHelpError":
        typer.echo(ctx.get_help() if ctx is not None else "")
        return 0
    where = f"{ctx.command_path}: " if ctx is not None else ""
    message = " ".join(err.format_message().split())  # click may wrap long messages over lines
    hint = " (see --help)" if ctx is not None else ""
    print(f"p3eft: error: {where}{message}{hint}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 on success, 2 on a user error).

    Every user error ends as ONE line ``p3eft: error: ...`` on stderr with exit code 2: click's usage
    errors (unknown flags, values out of range, for which click would print a multi-line box) and our
    own :class:`P3eftError`. Anything else is a bug and keeps its traceback.
    """
    try:
        rv = app(args=argv, prog_name="p3eft", standalone_mode=False)
    except _click_errors() as err:
        return _usage_error(err)
    except typer.Abort:
        print("p3eft: aborted", file=sys.stderr)
        return 130
    except P3eftError as err:
        print(f"p3eft: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SystemExit as ex:
        if ex.code is None or isinstance(ex.code, int):
            return ex.code or 0
        print(ex.code, file=sys.stderr)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
