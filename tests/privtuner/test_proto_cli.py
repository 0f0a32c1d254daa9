"""`p3eft privtuner ...` and `p3eft serve privtuner-model-owner`: bad input is one line on stderr, exit 2."""

from __future__ import annotations

import pytest

from p3eft.cli.main import main

BAD = [
    (["privtuner", "finetune", "--out", "x", "--end", "maybe"], "--end must be export or encrypted"),
    (["privtuner", "finetune", "--out", "x", "--limit", "0"], "Invalid value for '--limit'"),
    (["privtuner", "finetune", "--out", "x", "--server", "nohostport", "--certs", "."], "bad party address"),
    (["privtuner", "finetune", "--out", "x", "--server", "127.0.0.1:1"], "--server needs --certs"),
    (["privtuner", "finetune", "--out", "x", "--certs", "."], "only used with --server"),
    (["privtuner", "evaluate", "--limit", "-3"], "Invalid value for '--limit'"),
    (["privtuner", "evaluate", "--adapter", "a", "--train-limit", "2"], "plaintext"),
    (["privtuner", "evaluate", "--adapter", "a", "--checkpoint", "c"], "plaintext"),
    (["privtuner", "evaluate", "--checkpoint", "c", "--train-limit", "2"], "takes no --train-limit"),
    (
        ["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--end-policy", "maybe"],
        "export or encrypted",
    ),
    (["privtuner", "bench", "--json", "x.json", "--repeats", "0"], "Invalid value for '--repeats'"),
    (
        ["privtuner", "bench", "--json", "x.json", "--rotation-keys", "all"],
        "Invalid value for '--rotation-keys'",
    ),
    (["privtuner", "verify", "--rotation-keys", "POW2"], "Invalid value for '--rotation-keys'"),
    (
        ["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--rotation-keys", ""],
        "Invalid value for '--rotation-keys'",
    ),
    (["privtuner", "bench", "--json", "x.json", "--param-sets", "PT16384,,"], "empty name"),
    (["privtuner", "bench", "--json", "x.json", "--workers", "0"], "Invalid value for '--workers'"),
    (["privtuner", "bench", "--json", "x.json", "--workers", "33"], "Invalid value for '--workers'"),
    (
        ["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--workers", "0"],
        "Invalid value for '--workers'",
    ),
    (
        ["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--workers", "two"],
        "Invalid value for '--workers'",
    ),
    (["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--factory", "nomodule"], "bad factory"),
    (
        ["serve", "privtuner-model-owner", "--certs", "/nonexistent", "--idle-timeout", "0"],
        "must be positive",
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("p3eft: error:") and message in err, err
    assert len(err.splitlines()) == 1
