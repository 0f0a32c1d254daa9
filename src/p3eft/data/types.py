"""Typed examples and splits shared by every scheme's training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class MultipleChoiceExample:
    """A context and its candidate continuations, scored lm-eval-harness style.

    ``label`` is the gold choice used for ``acc``/``acc_norm`` and for training. ``golds`` lists every
    accepted choice when more than one is correct (WebQuestions); it defaults to ``(label,)``.
    Each choice is appended to the context after ``target_delimiter`` (a space, as in lm-eval-harness).
    """

    id: str
    context: str
    choices: list[str]
    label: int
    golds: tuple[int, ...] = ()
    target_delimiter: str = " "

    def __post_init__(self) -> None:
        if not self.golds:
            object.__setattr__(self, "golds", (self.label,))

    def continuation(self, i: int) -> str:
        """The text scored for choice ``i`` (delimiter + choice)."""
        return self.target_delimiter + self.choices[i]


@dataclass(frozen=True)
class ClassificationExample:
    """A sentence and its class label (SST-2: 0 negative, 1 positive)."""

    id: str
    text: str
    label: int


Kind = Literal["multiple_choice", "classification"]

# The metrics that mean something for each headline metric: WebQs accepts several gold answers, so
# only `exact_match` (greedy continuation) is informative there; for one-gold multiple choice,
# `exact_match` asks whether a whole answer is the greedy continuation, which says nothing about
# choosing among options (lm-eval-harness reports acc and acc_norm).
MEANINGFUL_METRICS: dict[str, tuple[str, ...]] = {
    "exact_match": ("exact_match",),
    "acc": ("acc", "acc_norm"),
    "accuracy": ("accuracy",),
}


@dataclass
class Task:
    """One split of one dataset, ready to train or evaluate on.

    ``metric`` names the headline metric (``acc``, ``exact_match`` for WebQs, ``accuracy`` for SST-2);
    ``note`` carries caveats every output must repeat (e.g. PIQA's seeded split of its validation file).
    """

    name: str
    split: str
    kind: Kind
    examples: list[MultipleChoiceExample] | list[ClassificationExample]
    metric: str
    source_files: list[str] = field(default_factory=list)
    note: str = ""
    num_labels: int = 0  # classification only

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics worth reporting for this task, headline first."""
        return MEANINGFUL_METRICS[self.metric]

    def describe(self) -> dict[str, object]:
        """JSON-ready facts for result files."""
        return {
            "dataset": self.name,
            "split": self.split,
            "n_examples": len(self.examples),
            "metric": self.metric,
            "source_files": self.source_files,
            "note": self.note,
        }
