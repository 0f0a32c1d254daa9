"""The public originals through the Hugging Face ``datasets`` hub, for users with a network.

Only reached when the local files are missing *and* the user set ``P3EFT_ALLOW_HUB=1``; needs the
``hub`` extra (``pip install p3eft[hub]``). Not exercised by our tests (our machines are offline).
Rows are converted to the same typed examples as the local loaders.
"""

from __future__ import annotations

from typing import Any

from p3eft.errors import MissingResourceError

_HUB = {
    # name: (dataset path, config, train split, eval split)
    "webqs": ("web_questions", None, "train", "test"),
    "obqa": ("openbookqa", "main", "train", "test"),
    "piqa": ("baber/piqa", None, "train", "validation"),
    "sciq": ("sciq", None, "train", "test"),
    "sst2": ("glue", "sst2", "train", "validation"),
}


def load_from_hub(name: str, split: str) -> tuple[list[Any], list[str], str]:
    try:
        import datasets
    except ImportError:
        raise MissingResourceError(
            "loading from the hub needs the `datasets` package (pip install p3eft[hub])"
        ) from None
    from p3eft.data import loaders
    from p3eft.data.types import ClassificationExample, MultipleChoiceExample

    path, config, train_split, eval_split = _HUB[name]
    hub_split = train_split if split == "train" else eval_split
    rows = datasets.load_dataset(path, config, split=hub_split)
    examples: list[Any] = []
    for i, r in enumerate(rows):
        if name == "webqs":
            ex = loaders._webqs_example(i, r["question"], list(r["answers"]), split)
            if ex is not None:
                examples.append(ex)
        elif name == "obqa":
            labels = list(r["choices"]["label"])
            examples.append(
                MultipleChoiceExample(
                    id=r["id"],
                    context=r["question_stem"],
                    choices=list(r["choices"]["text"]),
                    label=labels.index(r["answerKey"].strip()),
                )
            )
        elif name == "piqa":
            examples.append(
                MultipleChoiceExample(
                    id=f"piqa-{split}-{i}",
                    context=f"Question: {r['goal']}\nAnswer:",
                    choices=[r["sol1"], r["sol2"]],
                    label=int(r["label"]),
                )
            )
        elif name == "sciq":
            examples.append(loaders._sciq_row(i, r, split))
        else:
            examples.append(
                ClassificationExample(id=f"sst2-{split}-{i}", text=r["sentence"], label=int(r["label"]))
            )
    return examples, [f"hub:{path}/{config or ''}:{hub_split}"], ""
