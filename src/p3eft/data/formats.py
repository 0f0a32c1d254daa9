"""Rows of the five benchmarks as typed examples, in lm-evaluation-harness's prompt formats.

Shared by the local-file loaders (:mod:`p3eft.data.loaders`) and the hub loader
(:mod:`p3eft.data.hub`), so both give the same examples for the same row and neither reaches into
the other. Formats (each choice is scored after a single space):

* PIQA: context ``"Question: {goal}\\nAnswer:"``, choices ``[sol1, sol2]``, gold = label.
* OpenBookQA: context = question stem, choices = the four choice texts, gold = index of answerKey.
* SciQ: context ``"{support.lstrip()}\\nQuestion: {question}\\nAnswer:"``, choices
  ``[distractor1, distractor2, distractor3, correct_answer]``, gold = 3.
* WebQuestions: context ``"Question: {question}\\nAnswer:"``, choices = the accepted answers, sorted,
  without answers that extend a shorter accepted one; all are gold (metric ``exact_match``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from p3eft.data.types import MultipleChoiceExample


def parse_target_value(target: str) -> list[str]:
    """Answers from SEMPRE's ``(list (description "A") (description B))`` form.

    Some answers contain unescaped double quotes, so we split on ``(description `` rather than
    tokenising the s-expression; one pair of surrounding quotes is removed from each answer.
    """
    body = target.strip()
    if body.startswith("(list") and body.endswith(")"):
        body = body[len("(list") : -1]
    out = []
    for part in re.split(r"\(description ", body)[1:]:
        text = part.rstrip()
        if text.endswith(")"):
            text = text[:-1]
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = text[1:-1]
        text = text.replace('\\"', '"')
        if text:
            out.append(text)
    return out


def remove_prefix_answers(answers: list[str]) -> list[str]:
    """Sorted answers without those that extend an earlier kept answer (lm-eval-harness webqs rule)."""
    kept: list[str] = []
    for ans in sorted(answers):
        if not kept or not ans.startswith(kept[-1]):
            kept.append(ans)
    return kept


def webqs_example(i: int, question: str, answers: list[str], split: str) -> MultipleChoiceExample | None:
    choices = remove_prefix_answers(answers)
    if not choices:
        return None
    return MultipleChoiceExample(
        id=f"webqs-{split}-{i}",
        context=f"Question: {question}\nAnswer:",
        choices=choices,
        label=0,
        golds=tuple(range(len(choices))),
    )


def obqa_example(
    id: str, stem: str, choices: Sequence[Mapping[str, str]], answer_key: str
) -> MultipleChoiceExample:
    """One OpenBookQA question; ``choices`` are ``{"label": "A", "text": ...}`` in file order."""
    labels = [c["label"] for c in choices]
    return MultipleChoiceExample(
        id=id,
        context=stem,
        choices=[c["text"] for c in choices],
        label=labels.index(answer_key.strip()),
    )


def piqa_example(id: str, row: Mapping[str, Any], label: int) -> MultipleChoiceExample:
    """One PIQA goal with its two solutions."""
    return MultipleChoiceExample(
        id=id,
        context=f"Question: {row['goal']}\nAnswer:",
        choices=[row["sol1"], row["sol2"]],
        label=int(label),
    )


def sciq_example(i: int, row: dict[str, Any], split: str) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        id=f"sciq-{split}-{i}",
        context=f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
        choices=[row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]],
        label=3,
    )
