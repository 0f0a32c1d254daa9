"""Loaders for the five benchmarks, reading the original files (the folder layout, the file names and
where a user gets them: docs/foundation.md, "Datasets and metrics").

Prompt formats follow lm-evaluation-harness's task definitions (context, choices, gold index; each
choice is scored after a single space):

* PIQA: context ``"Question: {goal}\\nAnswer:"``, choices ``[sol1, sol2]``, gold = label.
* OpenBookQA: context = question stem, choices = the four choice texts, gold = index of answerKey.
* SciQ: context ``"{support.lstrip()}\\nQuestion: {question}\\nAnswer:"``, choices
  ``[distractor1, distractor2, distractor3, correct_answer]``, gold = 3.
* WebQuestions: context ``"Question: {question}\\nAnswer:"``, choices = the accepted answers, sorted,
  with every answer that has a strictly shorter accepted answer as prefix removed; *all* remaining
  choices are gold and the metric is ``exact_match``: 1 when some gold answer is the model's greedy
  continuation token by token (lm-eval-harness ``webqs``, metric ``exact_match``).
* SST-2: sentence classification, accuracy.

Splits: ``train`` is the original train file; ``eval`` is what lm-eval-harness reports on (test for
WebQs, OpenBookQA and SciQ; validation for PIQA; GLUE dev for SST-2). PIQA's train questions are not
available here, so unless the data folder holds ``piqa/train.jsonl`` we split ``valid.jsonl`` with a
fixed seed (ours): 1000 examples to train on, the other 838 to evaluate on, and say so in ``Task.note``.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p3eft.data.formats import (
    obqa_example,
    parse_target_value,
    piqa_example,
    sciq_example,
    webqs_example,
)
from p3eft.data.paths import resolve_data_dir
from p3eft.data.types import ClassificationExample, MultipleChoiceExample, Task
from p3eft.errors import MissingResourceError, P3eftError, UnknownNameError
from p3eft.network import hub_allowed

PIQA_SPLIT_SEED = 20200101  # ours: fixed, independent of any run seed, so every scheme sees the same split
PIQA_TRAIN_SIZE = 1000
SPLITS = ("train", "eval")

_ALIASES = {"webquestions": "webqs", "web_questions": "webqs", "openbookqa": "obqa", "sst-2": "sst2"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise P3eftError(f"{path} is not valid JSON: {err}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise P3eftError(f"{path}:{n} is not valid JSON: {err}") from None
    return rows


def _need(path: Path) -> Path:
    if not path.is_file():
        raise MissingResourceError(f"dataset file {path} is missing")
    return path


# --- WebQuestions -------------------------------------------------------------------------------


def _load_webqs(root: Path, split: str) -> tuple[list[MultipleChoiceExample], list[str], str]:
    fname = "webquestions.examples.train.json" if split == "train" else "webquestions.examples.test.json"
    path = _need(root / "webquestions" / fname)
    examples = []
    for i, row in enumerate(_read_json(path)):
        ex = webqs_example(i, row["utterance"], parse_target_value(row["targetValue"]), split)
        if ex is not None:
            examples.append(ex)
    return examples, [str(path)], ""


# --- OpenBookQA ---------------------------------------------------------------------------------


def _load_obqa(root: Path, split: str) -> tuple[list[MultipleChoiceExample], list[str], str]:
    path = _need(root / "openbookqa" / ("train.jsonl" if split == "train" else "test.jsonl"))
    rows = _read_jsonl(path)
    examples = [
        obqa_example(r["id"], r["question"]["stem"], r["question"]["choices"], r["answerKey"]) for r in rows
    ]
    return examples, [str(path)], ""


# --- PIQA ---------------------------------------------------------------------------------------


def _piqa_examples(questions: Path, labels: Path, tag: str) -> list[MultipleChoiceExample]:
    rows = _read_jsonl(questions)
    labs = [int(x) for x in labels.read_text().split()]
    if len(rows) != len(labs):
        raise P3eftError(f"{questions} has {len(rows)} questions but {labels} has {len(labs)} labels")
    return [
        piqa_example(str(r.get("id", f"piqa-{tag}-{i}")), r, lab)
        for i, (r, lab) in enumerate(zip(rows, labs, strict=True))
    ]


def piqa_valid_split(n: int) -> tuple[list[int], list[int]]:
    """Fixed seeded (train, eval) index split of PIQA's validation file (ours; see module doc)."""
    order = list(range(n))
    random.Random(PIQA_SPLIT_SEED).shuffle(order)
    train = sorted(order[:PIQA_TRAIN_SIZE])
    held = sorted(order[PIQA_TRAIN_SIZE:])
    return train, held


def _load_piqa(root: Path, split: str) -> tuple[list[MultipleChoiceExample], list[str], str]:
    d = root / "piqa"
    valid_q, valid_l = _need(d / "valid.jsonl"), _need(d / "valid-labels.lst")
    train_q, train_l = d / "train.jsonl", d / "train-labels.lst"
    if train_q.is_file() and train_l.is_file():
        if split == "train":
            return _piqa_examples(train_q, train_l, "train"), [str(train_q), str(train_l)], ""
        return _piqa_examples(valid_q, valid_l, "valid"), [str(valid_q), str(valid_l)], ""
    examples = _piqa_examples(valid_q, valid_l, "valid")
    train_idx, eval_idx = piqa_valid_split(len(examples))
    idx = train_idx if split == "train" else eval_idx
    note = (
        f"PIQA train questions are not available here: this {split} split is a fixed seeded part "
        f"(seed {PIQA_SPLIT_SEED}; {len(train_idx)} train / {len(eval_idx)} eval) of the official validation "
        "file, so PIQA accuracy is on held-out validation questions, not the official validation score"
    )
    return [examples[i] for i in idx], [str(valid_q), str(valid_l)], note


# --- SciQ ---------------------------------------------------------------------------------------


def _load_sciq(root: Path, split: str) -> tuple[list[MultipleChoiceExample], list[str], str]:
    path = _need(root / "sciq" / ("train.json" if split == "train" else "test.json"))
    return [sciq_example(i, r, split) for i, r in enumerate(_read_json(path))], [str(path)], ""


# --- SST-2 --------------------------------------------------------------------------------------


def _load_sst2(root: Path, split: str) -> tuple[list[ClassificationExample], list[str], str]:
    path = _need(root / "sst2" / ("train.tsv" if split == "train" else "dev.tsv"))
    examples = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or header[:2] != ["sentence", "label"]:
            raise P3eftError(f"{path} does not start with the GLUE header 'sentence<TAB>label'")
        for i, row in enumerate(reader):
            examples.append(
                ClassificationExample(id=f"sst2-{split}-{i}", text=row[0].strip(), label=int(row[1]))
            )
    return examples, [str(path)], ""


# --- registry -----------------------------------------------------------------------------------

_Loader = Callable[[Path, str], tuple[list[Any], list[str], str]]
_DATASETS: dict[str, tuple[_Loader, str, str, str]] = {
    # name: (loader, kind, metric, description)
    "webqs": (_load_webqs, "multiple_choice", "exact_match", "WebQuestions (Berant et al. 2013)"),
    "obqa": (_load_obqa, "multiple_choice", "acc", "OpenBookQA main (Mihaylov et al. 2018)"),
    "piqa": (_load_piqa, "multiple_choice", "acc", "PIQA (Bisk et al. 2020)"),
    "sciq": (_load_sciq, "multiple_choice", "acc", "SciQ (Welbl et al. 2017)"),
    "sst2": (_load_sst2, "classification", "accuracy", "SST-2, GLUE (Socher et al. 2013)"),
}


def canonical_name(name: str) -> str:
    """The canonical dataset name for a name or alias; unknown names raise listing the known ones."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _DATASETS:
        known = ", ".join([*_DATASETS, *_ALIASES])
        raise UnknownNameError(f"unknown dataset {name!r}; known datasets: {known}")
    return key


def list_datasets() -> list[dict[str, str]]:
    """Name, kind, headline metric and description of every dataset."""
    return [{"name": n, "kind": k, "metric": m, "description": d} for n, (_, k, m, d) in _DATASETS.items()]


def load_task(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> Task:
    """One split (``train`` or ``eval``) of a dataset as typed examples.

    ``limit`` keeps the first N examples in file order (as lm-eval-harness's ``--limit``), after an
    optional seeded shuffle (``shuffle=True``, seed ``seed``). ``limit`` must be positive.
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if limit is not None and limit <= 0:
        raise P3eftError(f"--limit must be a positive number of examples, got {limit}")
    loader, kind, metric, _ = _DATASETS[key]
    # A folder the user named (--data-dir, P3EFT_DATA) is used or refused, never replaced by the hub:
    # the hub is only a fallback for the default folder, and only with P3EFT_ALLOW_HUB=1.
    named = data_dir is not None or bool(os.environ.get("P3EFT_DATA"))
    try:
        root = resolve_data_dir(data_dir)
        examples, files, note = loader(root, split)
    except MissingResourceError as err:
        if named or not hub_allowed():
            raise
        from p3eft.data.hub import load_from_hub

        examples, files, note = load_from_hub(key, split, reason=str(err))
    if shuffle:
        examples = list(examples)
        random.Random(seed).shuffle(examples)
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise P3eftError(f"dataset {key} ({split}) has no examples")
    num_labels = 2 if kind == "classification" else 0
    return Task(
        name=key,
        split=split,
        kind=kind,  # type: ignore[arg-type]
        examples=examples,
        metric=metric,
        source_files=files,
        note=note,
        num_labels=num_labels,
    )
