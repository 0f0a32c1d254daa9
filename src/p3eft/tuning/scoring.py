"""lm-eval-harness style scoring: log-likelihood of each choice given its context, and SST-2 accuracy.

For each (context, choice) pair the continuation is ``delimiter + choice``; its tokens are those of
``tokenize(context + continuation)`` after the first ``len(tokenize(context))`` tokens, and its score
is the sum of the model's log-probabilities of those tokens. ``acc`` picks the highest sum,
``acc_norm`` the highest sum divided by the choice's length in characters (lm-eval-harness's
length normalisation), ``exact_match`` asks whether some gold choice is the model's greedy
continuation token by token (the WebQs metric). No special tokens are added (lm-eval-harness's
default for these models; and it sidesteps the SmolLM2 BOS difference between transformers 4 and 5).

Everything goes through ``logits_fn(input_ids, attention_mask) -> [B, T, V]`` so any model, including
an obfuscated split model, can be scored by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from p3eft.data.types import ClassificationExample, MultipleChoiceExample, Task
from p3eft.errors import P3eftError

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (input_ids, attention_mask, positions) -> the logits at the marked positions only, [N, V] row-major
SelectedLogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_scoring_args(batch_size: int, max_length: int) -> None:
    """Refuse sizes no scoring can use (``--batch-size 0`` would loop forever or pick option 0 silently)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise P3eftError(f"batch size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise P3eftError(f"max length must be an integer >= 2 tokens, got {max_length!r}")


def meaningful_metrics(task: Task, metrics: dict) -> dict:
    """Only the metrics that mean something for ``task`` (see :data:`p3eft.data.types.MEANINGFUL_METRICS`),
    plus ``n`` and ``metrics`` (their names, headline first) so every printer shows the same ones."""
    names = task.metrics
    extra = {k: metrics[k] for k in ("mean_gold_loglik",) if k in metrics}
    return {**{m: metrics[m] for m in names}, **extra, "n": metrics["n"], "metrics": list(names)}


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the lm-eval-harness way (tokenise the whole, then cut)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:  # tokenisation merged the continuation into the context's last token
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        whole = ctx + cont
    return whole[: len(whole) - len(cont)], cont


def choice_logliks(
    logits: torch.Tensor, targets: torch.Tensor, cont_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row continuation log-likelihood and greedy flag.

    ``logits[b, t]`` is the model's prediction for token ``targets[b, t]``; ``cont_mask[b, t]`` marks
    the continuation positions. Returns ``(loglik[b], is_greedy[b])``: the sum of
    ``log_softmax(logits[b, t])[targets[b, t]]`` over marked positions, and whether the argmax equals
    the target at every marked position. Only marked positions are normalised (saves memory at large V).
    """
    mask = cont_mask.bool()
    return selected_logliks(logits[mask], targets, mask)


def selected_logliks(
    selected: torch.Tensor, targets: torch.Tensor, cont_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`choice_logliks` from the logits at the marked positions only (``[N, V]``, row-major
    order of ``cont_mask``), as a :data:`SelectedLogitsFn` returns them."""
    mask = cont_mask.bool()
    if selected.ndim != 2 or selected.shape[0] != int(mask.sum()):
        raise P3eftError(
            f"expected logits at the {int(mask.sum())} scored positions, got shape {tuple(selected.shape)}"
        )
    rows = torch.arange(mask.shape[0], device=selected.device).unsqueeze(1).expand_as(mask)[mask]
    sel = selected.float()  # [N, V]
    tgt = targets[mask]
    tok_lp = torch.log_softmax(sel, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    hit = sel.argmax(-1) == tgt
    ll = torch.zeros(mask.shape[0], dtype=torch.float64, device=selected.device)
    ll.index_add_(0, rows, tok_lp.double())
    misses = torch.zeros(mask.shape[0], dtype=torch.long, device=selected.device)
    misses.index_add_(0, rows, (~hit).long())
    return ll, misses == 0


@dataclass
class _Request:
    example: int
    choice: int
    tokens: list[int]  # full sequence (context + continuation), already truncated
    n_cont: int


def _requests(tokenizer, examples: Sequence[MultipleChoiceExample], max_length: int) -> list[_Request]:
    reqs = []
    for ei, ex in enumerate(examples):
        for ci in range(len(ex.choices)):
            ctx, cont = encode_pair(tokenizer, ex.context, ex.continuation(ci))
            full = (ctx + cont)[-(max_length + 1) :]
            reqs.append(_Request(ei, ci, full, min(len(cont), len(full) - 1)))
    return reqs


def score_multiple_choice(
    logits_fn: LogitsFn | None,
    tokenizer,
    examples: Sequence[MultipleChoiceExample],
    *,
    batch_size: int = 8,
    progress: bool = True,
    max_length: int = 1024,
    pad_token_id: int | None = None,
    return_details: bool = False,
    selected_logits_fn: SelectedLogitsFn | None = None,
) -> dict:
    """``acc``, ``acc_norm``, ``exact_match``, ``mean_gold_loglik`` and ``n`` over ``examples`` (module doc).

    ``mean_gold_loglik`` is the mean log-likelihood of the best gold choice: a continuous number that
    moves with any change of the model, where accuracies on a few questions may not. Give
    ``selected_logits_fn`` instead of ``logits_fn`` for a model that computes logits only where they
    are scored (the continuation's positions).
    """
    if (logits_fn is None) == (selected_logits_fn is None):
        raise ValueError("give exactly one of logits_fn and selected_logits_fn")
    if not examples:
        raise ValueError("no examples to score")
    check_scoring_args(batch_size, max_length)
    pad = pad_token_id if pad_token_id is not None else (tokenizer.pad_token_id or 0)
    reqs = _requests(tokenizer, examples, max_length)
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i].tokens))  # less padding per batch
    logliks = [0.0] * len(reqs)
    greedy = [False] * len(reqs)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for idx in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
            width = max(len(reqs[i].tokens) for i in idx) - 1
            inp = torch.full((len(idx), width), pad, dtype=torch.long)
            tgt = torch.full((len(idx), width), pad, dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            cm = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                toks = reqs[i].tokens
                n = len(toks) - 1
                inp[row, :n] = torch.tensor(toks[:-1])
                tgt[row, :n] = torch.tensor(toks[1:])
                att[row, :n] = 1
                cm[row, n - reqs[i].n_cont : n] = True
            if selected_logits_fn is not None:
                ll, gr = selected_logliks(selected_logits_fn(inp, att, cm), tgt, cm)
            else:
                ll, gr = choice_logliks(logits_fn(inp, att), tgt, cm)
            for row, i in enumerate(idx):
                logliks[i], greedy[i] = float(ll[row]), bool(gr[row])
    per_ex: dict[int, list[int]] = {}
    for k, r in enumerate(reqs):
        per_ex.setdefault(r.example, []).append(k)
    acc = acc_norm = em = gold_ll = 0.0
    details = []
    for ei, ex in enumerate(examples):
        ks = per_ex[ei]
        ll = [logliks[k] for k in ks]
        norm = [v / max(len(c), 1) for v, c in zip(ll, ex.choices, strict=True)]
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        hit_em = any(greedy[ks[g]] for g in ex.golds)
        acc += pred in ex.golds
        acc_norm += pred_norm in ex.golds
        em += hit_em
        gold_ll += max(ll[g] for g in ex.golds)
        if return_details:
            details.append(
                {"id": ex.id, "logliks": ll, "pred": pred, "pred_norm": pred_norm, "golds": list(ex.golds)}
            )
    n = len(examples)
    out = {
        "acc": acc / n,
        "acc_norm": acc_norm / n,
        "exact_match": em / n,
        "mean_gold_loglik": gold_ll / n,  # continuous: shows any change of the model, unlike acc
        "n": n,
    }
    if return_details:
        out["details"] = details
    return out


def classification_accuracy(
    logits_fn: LogitsFn,
    tokenizer,
    examples: Sequence[ClassificationExample],
    *,
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = True,
) -> dict:
    """Accuracy of ``argmax logits_fn(ids, mask)[b]`` (``[B, num_labels]``) against the labels."""
    if not examples:
        raise ValueError("no examples to score")
    check_scoring_args(batch_size, max_length)
    correct = 0
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="classifying", unit="batch", disable=not progress):
            enc = tokenizer(
                [ex.text for ex in batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits = logits_fn(enc["input_ids"], enc["attention_mask"])
            pred = logits.argmax(-1)
            correct += int((pred == torch.tensor([ex.label for ex in batch])).sum())
    return {"accuracy": correct / len(examples), "n": len(examples)}
