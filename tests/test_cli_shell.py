"""The CLI shell: every command group is listed, and a missing capability fails cleanly."""

import subprocess
import sys

import pytest

from p3eft.cli.main import app, main

GROUPS = ["finetune", "evaluate", "models", "obfuscatune", "privtuner", "wireless", "serve", "demo", "bench"]


def test_help_lists_every_group():
    import typer

    assert set(GROUPS) <= set(typer.main.get_command(app).commands)


def test_pending_group_says_what_it_waits_for(capsys):
    assert main(["privtuner"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p3eft: error:") and "waits for" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--help"]])
def test_console_script_runs(argv):
    out = subprocess.run([sys.executable, "-m", "p3eft.cli.main", *argv], capture_output=True, text=True)
    assert out.returncode == 0 and "obfuscatune" in out.stdout
