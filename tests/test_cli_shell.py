"""The CLI shell: every command group is listed and runs as a console script."""

import subprocess
import sys

import pytest

from p3eft.cli.main import app

GROUPS = ["finetune", "evaluate", "models", "obfuscatune", "privtuner", "wireless", "serve", "demo", "bench"]


def test_help_lists_every_group():
    import typer

    assert set(GROUPS) <= set(typer.main.get_command(app).commands)


def test_privtuner_group_lists_its_commands():
    import typer

    group = typer.main.get_command(app).commands["privtuner"]
    assert {"finetune", "evaluate", "verify", "bench"} <= set(group.commands)


@pytest.mark.parametrize("argv", [["--help"]])
def test_console_script_runs(argv):
    out = subprocess.run([sys.executable, "-m", "p3eft.cli.main", *argv], capture_output=True, text=True)
    assert out.returncode == 0 and "obfuscatune" in out.stdout
