"""Choice scoring: hand-built logits whose answers are known, and batching invariance."""

from __future__ import annotations

import math

import pytest
import torch

from p3eft.data import MultipleChoiceExample
from p3eft.errors import P3eftError
from p3eft.models import load_causal_lm
from p3eft.models.loading import _load_tokenizer
from p3eft.models.registry import get_spec
from p3eft.tuning import choice_logliks, encode_pair, score_multiple_choice


def test_choice_logliks_matches_hand_computation():
    # Two rows, vocabulary of 3; row 0 scores positions 1..2, row 1 only position 0.
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 3.0, 0.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
        ]
    )
    targets = torch.tensor([[1, 0, 1], [1, 2, 2]])
    mask = torch.tensor([[False, True, True], [True, False, False]])
    ll, greedy = choice_logliks(logits, targets, mask)
    lse = math.log(math.exp(2) + 2)
    row0 = (2 - lse) + (0 - math.log(math.e + 2))
    row1 = 3 - math.log(math.exp(3) + 2)
    assert ll.tolist() == pytest.approx([row0, row1], abs=1e-6)
    # Row 0: position 2 predicts token 2 but the target is 1 -> not greedy. Row 1: argmax is 1 -> greedy.
    assert greedy.tolist() == [False, True]


@pytest.fixture(scope="module")
def gpt2_tok():
    return _load_tokenizer(get_spec("gpt2"), None)


def _unigram_logits_fn(logp: dict[int, float], vocab: int):
    """A 'model' whose next-token distribution is the same everywhere: log p[token] as given."""
    z = torch.full((vocab,), -1e9)
    rest = 1.0 - sum(math.exp(v) for v in logp.values())
    assert rest > 0
    z[0] = math.log(rest)  # token 0 ("!") soaks up the remaining mass so the given values are exact
    for tok, v in logp.items():
        z[tok] = v

    def fn(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return z.expand(ids.shape[0], ids.shape[1], vocab).clone()

    return fn


def test_score_multiple_choice_known_answer(gpt2_tok):
    a, b, c = (gpt2_tok(t, add_special_tokens=False)["input_ids"] for t in (" a", " b", " c"))
    assert len(a) == len(b) == len(c) == 1
    fn = _unigram_logits_fn({a[0]: -1.0, b[0]: -1.1, c[0]: -1.5}, len(gpt2_tok))
    # "a b" has loglik -2.1 (2 tokens, 3 chars -> -0.7 per char); "c" has -1.5 (1 char -> -1.5 per char).
    # acc picks "c" (higher sum), acc_norm picks "a b" (higher per character); only "a a" is greedy.
    ex1 = MultipleChoiceExample(id="1", context="Question: which?\nAnswer:", choices=["a b", "c"], label=1)
    ex2 = MultipleChoiceExample(id="2", context="Question: which?\nAnswer:", choices=["a b", "c"], label=0)
    ex3 = MultipleChoiceExample(id="3", context="Pick:", choices=["c c", "a a"], label=1)
    res = score_multiple_choice(
        fn, gpt2_tok, [ex1, ex2, ex3], batch_size=2, progress=False, return_details=True
    )
    d = {x["id"]: x for x in res["details"]}
    assert d["1"]["logliks"] == pytest.approx([-2.1, -1.5], abs=1e-5)
    assert d["3"]["logliks"] == pytest.approx([-3.0, -2.0], abs=1e-5)
    assert [d[k]["pred"] for k in "123"] == [1, 1, 1]
    assert [d[k]["pred_norm"] for k in "123"] == [0, 0, 1]
    assert res["acc"] == pytest.approx(2 / 3)
    assert res["acc_norm"] == pytest.approx(2 / 3)
    assert res["exact_match"] == pytest.approx(1 / 3)  # only ex3's gold "a a" is the greedy continuation
    assert res["n"] == 3


def test_encode_pair_splits_like_lm_eval(gpt2_tok):
    ctx, cont = encode_pair(gpt2_tok, "Question: x\nAnswer:", " Paris")
    whole = gpt2_tok("Question: x\nAnswer: Paris", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole and gpt2_tok.decode(cont) == " Paris"


def test_batching_and_padding_do_not_change_scores(tiny_gpt2_dir):
    lm = load_causal_lm(tiny_gpt2_dir)
    examples = [
        MultipleChoiceExample(
            id=str(i), context=f"Question: item {i} is{' very' * i}\nAnswer:", choices=c, label=0
        )
        for i, c in enumerate(
            [["red", "a much longer answer here"], ["x", "y", "zed"], ["one two three", "four"]]
        )
    ]

    def fn(ids, mask):
        return lm.model(input_ids=ids, attention_mask=mask).logits

    one = score_multiple_choice(fn, lm.tokenizer, examples, batch_size=1, progress=False, return_details=True)
    many = score_multiple_choice(
        fn, lm.tokenizer, examples, batch_size=5, progress=False, return_details=True
    )
    for x, y in zip(one["details"], many["details"], strict=True):
        assert x["logliks"] == pytest.approx(y["logliks"], abs=1e-4)


def test_scoring_from_the_scored_positions_only_equals_full_logits(tiny_gpt2_dir):
    """A model that returns logits only where the scorer looks (the continuation) scores the same as
    full logits; a function that returns the wrong positions is refused, not misread."""
    lm = load_causal_lm(tiny_gpt2_dir)
    examples = [
        MultipleChoiceExample(id=str(i), context=f"Question: {i} plus {i}?\nAnswer:", choices=c, label=0)
        for i, c in enumerate([["two", "a longer wrong answer"], ["x", "yy", "zed"]])
    ]

    def full(ids, mask):
        return lm.model(input_ids=ids, attention_mask=mask).logits

    seen = []

    def selected(ids, mask, positions):
        seen.append((int(positions.sum()), positions.numel()))
        return full(ids, mask)[positions]

    a = score_multiple_choice(full, lm.tokenizer, examples, batch_size=2, progress=False, return_details=True)
    b = score_multiple_choice(
        None,
        lm.tokenizer,
        examples,
        batch_size=2,
        progress=False,
        return_details=True,
        selected_logits_fn=selected,
    )
    assert a == b
    assert all(0 < n < total for n, total in seen)  # only the continuations are asked for
    with pytest.raises(P3eftError, match="scored positions"):
        score_multiple_choice(
            None, lm.tokenizer, examples, progress=False, selected_logits_fn=lambda i, m, p: full(i, m)
        )
    with pytest.raises(ValueError, match="exactly one"):
        score_multiple_choice(full, lm.tokenizer, examples, progress=False, selected_logits_fn=selected)
