"""The CLI shell: every command group is listed and runs as a console script."""

import re
import subprocess
import sys

import pytest

from p3eft.cli.main import app, main

GROUPS = [
    "finetune",
    "evaluate",
    "models",
    "obfuscatune",
    "privtuner",
    "wireless",
    "serve",
    "demo",
    "bench",
    "keys",
    "model-owner",
    "attack",
]


def _root():
    import typer

    return typer.main.get_command(app)


def test_help_lists_every_group():
    assert set(GROUPS) == set(_root().commands)


def _leaf_commands(group, path=()):
    for name, cmd in getattr(group, "commands", {}).items():
        sub = getattr(cmd, "commands", None)
        if sub:
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


@pytest.mark.parametrize("group", GROUPS)
def test_unknown_flag_is_one_line_and_exit_2(group, capsys):
    """The README's promise, for every group: bad usage ends with ONE line on stderr and exit code 2."""
    cmd = _root().commands[group]
    leaf = next(iter(_leaf_commands(cmd)), None)
    argv = [group, *(leaf[0] if leaf else ()), "--no-such-flag"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("p3eft: error:") and "--no-such-flag" in err and "Traceback" not in err


def test_bare_group_prints_its_help(capsys):
    assert main(["models"]) == 0
    assert "Usage: p3eft models" in capsys.readouterr().out


# Groups being rewritten on other branches at the time of writing (their flags get help there).
HELP_CHECKED_ELSEWHERE: tuple[str, ...] = ()


def test_every_flag_has_help_text():
    """Item 9: no command has a flag without help (the obfuscatune ones had none)."""
    missing = [
        f"p3eft {' '.join(path)} {param.opts[0]}"
        for path, cmd in _leaf_commands(_root())
        if path[0] not in HELP_CHECKED_ELSEWHERE
        for param in cmd.params
        if getattr(param, "param_type_name", "") == "option" and param.name != "help" and not param.help
    ]
    assert not missing, missing


def test_privtuner_group_lists_its_commands():
    import typer

    group = typer.main.get_command(app).commands["privtuner"]
    assert {"finetune", "evaluate", "verify", "bench"} <= set(group.commands)


@pytest.mark.parametrize("argv", [["--help"], ["keys", "--help"], ["model-owner", "--help"]])
def test_console_script_runs(argv):
    out = subprocess.run([sys.executable, "-m", "p3eft.cli.main", *argv], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: p3eft" in out.stdout


def test_unknown_flag_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "p3eft.cli.main", "evaluate", "--bacth-size", "4"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "--bacth-size" in out.stderr


# --- outputs are checked before any work (issue 14 item 3) --------------------------------------------

OUTPUT_CASES = [
    (["privtuner", "finetune", "--out", "FILE"], "--out FILE is a file"),
    (["privtuner", "finetune", "--out", "FILE/run"], "cannot be created"),
    (["privtuner", "finetune", "--out", "DIR/run", "--json", "DIR"], "--json DIR is a folder"),
    (["privtuner", "evaluate", "--json", "DIR"], "--json DIR is a folder"),
    (["privtuner", "verify", "--json", "DIR"], "--json DIR is a folder"),
    (["demo", "--out", "FILE"], "--out FILE is a file"),
    (["demo", "--out", "DIR/run", "--json", "DIR"], "--json DIR is a folder"),
    (["wireless", "figures", "--quick", "--out", "FILE"], "--out FILE is a file"),
    (["wireless", "regenerate", "--out", "FILE/run"], "cannot be created"),
    (["wireless", "run", "--users", "3", "--json", "DIR"], "--json DIR is a folder"),
    (["keys", "init", "FILE"], "key folder FILE is a file"),
    (["attack", "tokens", "--json", "DIR"], "--json DIR is a folder"),
    (["attack", "tokens", "--report", "FILE"], "--report FILE is a file"),
    (["bench", "fhe", "--sets", "N8192", "--json", "DIR"], "--json DIR is a folder"),
    (
        ["model-owner", "upload", "--enclave", "127.0.0.1:1", "--certs", "DIR", "--json", "DIR"],
        "--json DIR is a folder",
    ),
]


def _must_not_run(*args, **kwargs):
    raise AssertionError("work started although an output could not be written")


@pytest.mark.parametrize(("argv", "needle"), OUTPUT_CASES)
def test_bad_outputs_refused_before_any_work(argv, needle, capsys, monkeypatch, tmp_path):
    """Item 3: an output that is a file, a folder where a file goes, or cannot be created ends as one
    line with exit 2 before a model loads, a party starts or a sweep runs (not a traceback at the end)."""
    import p3eft.attacks.suite
    import p3eft.fhe.costs
    import p3eft.obfuscatune.net.demo
    import p3eft.obfuscatune.net.model_owner
    import p3eft.privtuner.wiring
    import p3eft.wireless
    import p3eft.wireless.experiments

    for module, name in (
        (p3eft.privtuner.wiring, "settings"),
        (p3eft.obfuscatune.net.demo, "run_demo"),
        (p3eft.wireless.experiments, "make_figures"),
        (p3eft.wireless, "solve"),
        (p3eft.attacks.suite, "run_suite"),
        (p3eft.fhe.costs, "measure_param_set"),
        (p3eft.obfuscatune.net.model_owner, "upload"),
    ):
        monkeypatch.setattr(module, name, _must_not_run)
    (tmp_path / "a-file").write_text("x")
    paths = {"FILE": str(tmp_path / "a-file"), "DIR": str(tmp_path)}

    def place(text: str) -> str:
        for key, value in paths.items():
            text = text.replace(key, value)
        return text

    assert main([place(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("p3eft: error:") and place(needle) in err, err


# --- the README's flag promise (issue 14 item 9) --------------------------------------------------------


def _finetune_flags(scheme: str) -> set[str]:
    cmd = _root().commands["finetune"] if scheme == "plain" else _root().commands[scheme].commands["finetune"]
    return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("--")}


def _readme_sentences() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return [" ".join(s.split()) for s in re.split(r"(?<=[.;])\s", text)]


def test_readme_says_exactly_which_flags_every_scheme_shares():
    """Item 9: a README sentence that promises flags to every scheme must hold for all three
    finetunes; the flags it says PrivTuner lacks must be absent there and present in the other two."""
    flags = {s: _finetune_flags(s) for s in ("plain", "obfuscatune", "privtuner")}
    shared = [s for s in _readme_sentences() if "every scheme" in s.lower() and "`--" in s]
    assert shared, "the README no longer says which flags every scheme takes"
    for sentence in shared:
        for flag in re.findall(r"`(--[a-z-]+)`", sentence):
            assert all(flag in f for f in flags.values()), (flag, sentence)
    also = next(s for s in _readme_sentences() if "ObfuscaTune also share" in s)
    for flag in re.findall(r"`(--[a-z-]+)`", also.split("(and")[0]):
        assert flag in flags["plain"] and flag in flags["obfuscatune"] and flag not in flags["privtuner"]


# --- copy-paste commands write into run folders, not into the committed results (issue 14 item 8) -----

_WRITES_RESULTS = re.compile(r"(--out|--json|--report|--save-scenario)[ =]+\S*docs/results")


def _commands_writing_results(text: str) -> list[str]:
    """The lines of fenced code blocks (what a user copies) that write under docs/results."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if _WRITES_RESULTS.search(line)]


def test_copy_paste_commands_do_not_write_into_the_committed_results():
    """Item 8: README's and docs/*.md's command blocks write under runs/ (or a name the user picks); how
    a committed result was made is told in the text beside it, never as a block to paste."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert len(docs) > 5
    found = [f"{d.name}: {line}" for d in docs for line in _commands_writing_results(d.read_text())]
    assert found == []
    # negative control: the old quick start line is caught
    old = "```bash\np3eft obfuscatune experiment --out docs/results/obfuscatune\n```\n"
    assert _commands_writing_results(old) == ["p3eft obfuscatune experiment --out docs/results/obfuscatune"]
