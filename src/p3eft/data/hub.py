"""The public originals through the Hugging Face ``datasets`` hub, for users with a network.

Only reached when the default data folder lacks the files, no folder was named (``--data-dir``,
``P3EFT_DATA``) *and* the user set ``P3EFT_ALLOW_HUB=1``; needs the ``hub`` extra
(``pip install p3eft[hub]``). Rows become the same typed examples as the local files give
(:mod:`p3eft.data.formats`). Every hub task carries a note saying where it came from; for PIQA the
hub has the official train split, so its evaluation is the *full* official validation file, a
different set of questions from the local seeded held-out part: the two are not comparable.
Not exercised by our tests beyond the refusals (our machines are offline).
"""

from __future__ import annotations

from typing import Any

from p3eft.data.formats import obqa_example, piqa_example, sciq_example, webqs_example
from p3eft.data.types import ClassificationExample
from p3eft.errors import MissingResourceError

HUB = {
    # name: (dataset path, config, train split, eval split)
    "webqs": ("web_questions", None, "train", "test"),
    "obqa": ("openbookqa", "main", "train", "test"),
    "piqa": ("baber/piqa", None, "train", "validation"),
    "sciq": ("sciq", None, "train", "test"),
    "sst2": ("glue", "sst2", "train", "validation"),
}


def hub_note(name: str, split: str, reason: str) -> str:
    """What every output of a hub-loaded task must repeat."""
    path, config, train_split, eval_split = HUB[name]
    hub_split = train_split if split == "train" else eval_split
    note = f"loaded from the hub ({path}{'/' + config if config else ''}, split {hub_split}) because {reason}"
    if name == "piqa":
        note += (
            "; hub PIQA trains on the official train split and evaluates on the full official validation "
            "split, NOT the local seeded held-out part: its numbers are not comparable with local PIQA runs"
        )
    return note


def _row_example(name: str, i: int, r: dict[str, Any], split: str) -> Any:
    if name == "webqs":
        return webqs_example(i, r["question"], list(r["answers"]), split)
    if name == "obqa":
        choices = [
            {"label": lab, "text": t}
            for lab, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True)
        ]
        return obqa_example(r["id"], r["question_stem"], choices, r["answerKey"])
    if name == "piqa":
        return piqa_example(f"piqa-{split}-{i}", r, int(r["label"]))
    if name == "sciq":
        return sciq_example(i, r, split)
    return ClassificationExample(id=f"sst2-{split}-{i}", text=r["sentence"], label=int(r["label"]))


def load_from_hub(
    name: str, split: str, *, reason: str = "the local files are missing"
) -> tuple[list[Any], list[str], str]:
    """``(examples, source labels, note)`` of one split from the hub, as the local loaders return them."""
    try:
        import datasets
    except ImportError:
        raise MissingResourceError(
            "loading from the hub needs the `datasets` package (pip install p3eft[hub])"
        ) from None
    path, config, train_split, eval_split = HUB[name]
    hub_split = train_split if split == "train" else eval_split
    rows = datasets.load_dataset(path, config, split=hub_split)
    examples = [ex for i, r in enumerate(rows) if (ex := _row_example(name, i, r, split)) is not None]
    return examples, [f"hub:{path}/{config or ''}:{hub_split}"], hub_note(name, split, reason)
