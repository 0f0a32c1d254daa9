"""Dataset loaders on the real files in ../shared/data: counts, formats, PIQA split, data-dir resolution."""

from __future__ import annotations

import shutil
import sys

import pytest

from p3eft.data import load_task, piqa_valid_split, resolve_data_dir
from p3eft.data.formats import parse_target_value, remove_prefix_answers
from p3eft.errors import MissingResourceError, P3eftError, UnknownNameError


@pytest.mark.parametrize(
    ("name", "split", "n"),
    [
        ("obqa", "train", 4957),
        ("openbookqa", "eval", 500),
        ("sciq", "train", 11679),
        ("sciq", "eval", 1000),
        ("sst2", "eval", 872),
        ("piqa", "train", 1000),
        ("piqa", "eval", 838),
    ],
)
def test_counts_match_the_files(name, split, n):
    assert len(load_task(name, split)) == n


def test_webqs_lm_eval_format():
    task = load_task("webquestions", "train", limit=3)
    ex = task.examples[0]
    assert task.name == "webqs" and task.metric == "exact_match"
    assert ex.context == "Question: what is the name of justin bieber brother?\nAnswer:"
    assert ex.choices == ["Jaxon Bieber", "Jazmyn Bieber"] and ex.golds == (0, 1)
    # Five originals (train + test) have unparseable answers only in broken quoting; nearly all survive.
    assert len(load_task("webqs", "train")) >= 3770 and len(load_task("webqs", "eval")) >= 2030


def test_webqs_answer_parsing_and_prefix_rule():
    assert parse_target_value('(list (description "Jazmyn Bieber") (description Lawyer))') == [
        "Jazmyn Bieber",
        "Lawyer",
    ]
    assert parse_target_value('(list (description ""Hope" is the thing"))') == ['"Hope" is the thing']
    assert remove_prefix_answers(["New York City", "New York", "Albany"]) == ["Albany", "New York"]


def test_multiple_choice_formats():
    sciq = load_task("sciq", "eval", limit=1).examples[0]
    assert sciq.label == 3 and sciq.choices[3] == "oxidants"
    assert sciq.context.endswith(
        "\nQuestion: Compounds that are capable of accepting electrons, such as o 2 or f2, are called what?\nAnswer:"
    )
    obqa = load_task("obqa", "eval", limit=1).examples[0]
    assert obqa.choices[obqa.label] == "quit eating lunch out" and obqa.context.startswith("A person wants")
    piqa = load_task("piqa", "eval", limit=1)
    assert piqa.examples[0].context.startswith("Question: ") and len(piqa.examples[0].choices) == 2
    sst = load_task("sst2", "eval", limit=1).examples[0]
    assert sst.text == "it 's a charming and often affecting journey ." and sst.label == 1


def test_piqa_split_is_fixed_disjoint_and_flagged():
    train, held = piqa_valid_split(1838)
    assert not set(train) & set(held) and len(train) + len(held) == 1838
    assert piqa_valid_split(1838) == (train, held)
    t_ids = {e.id for e in load_task("piqa", "train").examples}
    e_task = load_task("piqa", "eval")
    assert not t_ids & {e.id for e in e_task.examples}
    assert "validation" in e_task.note and "seed" in e_task.note
    assert load_task("piqa", "eval", seed=5).examples == e_task.examples  # the run seed never moves the split


def test_limit_and_shuffle():
    first = load_task("obqa", "train", limit=5)
    assert [e.id for e in first.examples] == [e.id for e in load_task("obqa", "train").examples[:5]]
    s1 = load_task("obqa", "train", limit=5, shuffle=True, seed=1)
    assert s1.examples == load_task("obqa", "train", limit=5, shuffle=True, seed=1).examples
    assert s1.examples != first.examples
    with pytest.raises(P3eftError, match="positive"):
        load_task("obqa", "train", limit=0)


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="known datasets: webqs"):
        load_task("imagenet", "train")
    with pytest.raises(UnknownNameError, match="split"):
        load_task("piqa", "test")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("P3EFT_DATA", raising=False)
    default = resolve_data_dir(None)
    assert (default / "piqa" / "valid.jsonl").is_file()
    with pytest.raises(MissingResourceError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("P3EFT_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()
    # An explicit folder wins over the environment; a folder without the file is a clear error.
    with pytest.raises(MissingResourceError, match="piqa"):
        load_task("piqa", "eval")
    shutil.copytree(default / "sst2", tmp_path / "sst2")
    assert len(load_task("sst2", "eval", data_dir=tmp_path)) == 872


# --- the hub fallback (issue 14 item 5) -----------------------------------------------------------


def _fake_datasets(monkeypatch, rows):
    """A stand-in for the `datasets` package that records what was asked (no network here)."""
    import types

    asked = []
    module = types.ModuleType("datasets")
    module.load_dataset = lambda path, config, split: asked.append((path, config, split)) or rows
    monkeypatch.setitem(sys.modules, "datasets", module)
    return asked


def test_hub_never_replaces_a_named_data_folder(monkeypatch, tmp_path):
    """A mistyped --data-dir (or P3EFT_DATA) with P3EFT_ALLOW_HUB=1 is an error, not a download."""
    asked = _fake_datasets(monkeypatch, [])
    monkeypatch.setenv("P3EFT_ALLOW_HUB", "1")
    with pytest.raises(MissingResourceError, match="does not exist"):
        load_task("piqa", "eval", data_dir=tmp_path / "typo")
    monkeypatch.setenv("P3EFT_DATA", str(tmp_path))  # exists, but holds no PIQA files
    with pytest.raises(MissingResourceError, match="piqa"):
        load_task("piqa", "eval")
    assert asked == []


def test_hub_piqa_is_labelled_not_comparable(monkeypatch, tmp_path):
    """Without a named folder and without local files, the hub is used, and every output says so; its
    PIQA split is not the local seeded one, and the note says the numbers are not comparable."""
    import p3eft.data.paths as paths

    row = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}
    asked = _fake_datasets(monkeypatch, [row])
    monkeypatch.delenv("P3EFT_DATA", raising=False)
    monkeypatch.setattr(paths, "_repo_roots", lambda: [tmp_path / "checkout"])  # no ../shared/data
    monkeypatch.setenv("P3EFT_ALLOW_HUB", "1")
    task = load_task("piqa", "eval")
    assert asked == [("baber/piqa", None, "validation")]
    assert "loaded from the hub" in task.note and "not comparable" in task.note
    assert task.describe()["note"] == task.note and task.source_files == ["hub:baber/piqa/:validation"]
    ex = task.examples[0]
    assert (ex.context, ex.choices, ex.label) == (
        "Question: Open a jar\nAnswer:",
        [row["sol1"], row["sol2"]],
        0,
    )
    monkeypatch.setenv("P3EFT_ALLOW_HUB", "")
    with pytest.raises(MissingResourceError, match="no data directory"):
        load_task("piqa", "eval")  # without the switch, no hub


def test_hub_and_loaders_do_not_import_each_other():
    """Layering: both use p3eft.data.formats; hub imports nothing from loaders (no cycle, no privates)."""
    import ast
    import inspect

    import p3eft.data.hub as hub

    imported = {
        node.module
        for node in ast.walk(ast.parse(inspect.getsource(hub)))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "p3eft.data.formats" in imported and not any("loaders" in m for m in imported)


def test_importing_p3eft_models_leaves_the_process_settings_alone():
    import os
    import subprocess

    code = "import os, p3eft.models, p3eft.data, p3eft.tuning; print(os.environ.get('HF_HUB_OFFLINE'))"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_docs_list_every_file_the_loaders_read(monkeypatch):
    """Issue 14: a user builds the data folder from docs/foundation.md alone (they have no
    ../shared/data/README.md), so every file the loaders need appears there under its folder."""
    from pathlib import Path

    import p3eft.data.loaders as loaders

    read: list[Path] = []
    need = loaders._need
    monkeypatch.setattr(loaders, "_need", lambda path: read.append(path) or need(path))
    for name in ("webqs", "obqa", "piqa", "sciq", "sst2"):
        for split in ("train", "eval"):
            load_task(name, split, limit=1)
    root = resolve_data_dir()
    wanted = sorted({p.relative_to(root).as_posix() for p in read})
    assert len(wanted) >= 9  # negative control: the loaders' reads were seen
    doc = (Path(__file__).resolve().parents[2] / "docs" / "foundation.md").read_text()
    assert [f for f in wanted if f not in doc] == []
