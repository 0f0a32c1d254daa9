"""Training examples and batches: tokenised (context, gold continuation) pairs and SST-2 sentences.

Loss is taken only on the gold continuation (labels are -100 on the context and on padding), the
same split of context and continuation that scoring uses, so training and evaluation agree.
Batches are a pure function of the step number (``StepBatches``), which is what makes a resumed run
continue exactly where a killed one stopped: the data position is the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from p3eft.data.types import ClassificationExample, MultipleChoiceExample
from p3eft.tuning.scoring import encode_pair

IGNORE_INDEX = -100


def build_lm_training_examples(
    tokenizer, examples: Sequence[MultipleChoiceExample], max_len: int
) -> list[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` per example: context + gold continuation, loss on the continuation only.

    Too-long sequences are cut from the left (the continuation is what we learn). The gold
    continuation is ``choices[label]`` (for WebQs, the first accepted answer in sorted order).
    """
    out = []
    for ex in examples:
        ctx, cont = encode_pair(tokenizer, ex.context, ex.continuation(ex.label))
        ids = (ctx + cont)[-max_len:]
        n_cont = min(len(cont), len(ids) - 1)
        labels = [IGNORE_INDEX] * (len(ids) - n_cont) + ids[len(ids) - n_cont :]
        out.append({"input_ids": ids, "labels": labels})
    return out


def collate_lm(batch: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(b["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_classification_examples(
    tokenizer, examples: Sequence[ClassificationExample], max_len: int
) -> list[dict[str, Any]]:
    """``{"input_ids", "label"}`` per sentence (with the tokenizer's special tokens, as BERT expects)."""
    out = []
    for ex in examples:
        ids = tokenizer(ex.text, truncation=True, max_length=max_len)["input_ids"]
        out.append({"input_ids": ids, "label": ex.label})
    return out


def collate_classification(batch: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad: ``input_ids``, ``attention_mask``, ``labels`` of shape ``[B]``."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
        mask[i, : len(b["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([b["label"] for b in batch])}


@dataclass
class StepBatches:
    """The batch for global step ``s`` is a pure function of (items, batch_size, seed, s).

    Epoch ``e`` visits the items in the order of a permutation seeded by ``(seed, e)``; step ``s``
    takes positions ``s*B .. s*B+B-1`` of the concatenated epochs.
    """

    items: Sequence[Any]
    batch_size: int
    seed: int
    collate: Callable[[Sequence[Any]], Any]
    _perms: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.items), generator=gen).tolist()
        return self._perms[epoch]

    def position(self, step: int) -> dict[str, int]:
        """Where step ``step`` starts in the data: epoch and index within it."""
        epoch, index = divmod(step * self.batch_size, len(self.items))
        return {"epoch": epoch, "index": index}

    def __call__(self, step: int) -> Any:
        picked = []
        for k in range(self.batch_size):
            epoch, i = divmod(step * self.batch_size + k, len(self.items))
            picked.append(self.items[self._perm(epoch)[i]])
        return self.collate(picked)
