"""Benchmark datasets as typed splits: WebQuestions, OpenBookQA, PIQA, SciQ (multiple choice), SST-2.

Public API: :func:`resolve_data_dir`, :func:`list_datasets`, :func:`load_task`, :class:`Task`,
:class:`MultipleChoiceExample`, :class:`ClassificationExample`.
"""

from p3eft.data.loaders import canonical_name, list_datasets, load_task, piqa_valid_split
from p3eft.data.paths import resolve_data_dir
from p3eft.data.types import ClassificationExample, MultipleChoiceExample, Task

__all__ = [
    "ClassificationExample",
    "MultipleChoiceExample",
    "Task",
    "canonical_name",
    "list_datasets",
    "load_task",
    "piqa_valid_split",
    "resolve_data_dir",
]
