"""The subspace-membership attack on block 0's static input mask (ours): it goes through fresh row
mixing when calls are shorter than the width, and must fail where it has no equations (calls whose
span is the whole space) or too few (too few known calls)."""

import functools

import pytest
import torch
from helpers_attacks import public_model, victim
from helpers_obf import VOCAB

from p3eft.attacks import static_mask, subspace, tokens
from p3eft.attacks.victim import Traffic, VictimConfig, run_victim
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, DEFAULT_MODE
from p3eft.obfuscatune.masks import CsprngStream, haar_orthogonal

D = 64  # the tiny model's width
KNOWN = 10  # known calls of 16 tokens: 9 suffice for the tiny model (d^2 = 4096 unknowns)


@pytest.fixture(scope="module")
def cands():
    return tokens.candidate_table(public_model())


def _short_traffic(calls: int = 13, length: int = 16) -> Traffic:
    """Single-prompt calls of ``length`` tokens: each sends length * 5/4 rows < d = 64 with mix:4."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(calls):
        ids = torch.randint(1, VOCAB, (1, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return Traffic(out)


@functools.cache
def short_victim(masks: str, defence: str):
    return run_victim(public_model(), _short_traffic(), VictimConfig(DEFAULT_MODE, masks, defence))


@pytest.mark.parametrize("masks", [DEFAULT_MASKS, "orthogonal"])
def test_subspace_attack_breaks_row_mixing_on_short_calls(cands, masks):
    v = short_victim(masks, "mix:4")
    res = subspace.subspace_attack(v, cands, known_calls=KNOWN)
    assert res["informative_known_calls"] == KNOWN
    assert res["calls_needed"] is not None and res["calls_needed"] <= KNOWN
    assert res["mask_error"] < 1e-3 and res["determined"]
    # a token twice in one secret group is found once (the group's span has one dimension less)
    assert res["decoded"]["calls"] == 3 and res["decoded"]["bag_recall"] >= 0.95
    assert res["decoded"]["bag_precision"] > 0.95
    # the pair-based estimators of the same victim find nothing (mixing stops *them*)
    assert static_mask.aligned_rows(v, cands)["rows_needed"] is None


def test_default_configuration_is_the_victim_tested():
    assert (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE) == ("strict", "kron:12", "mix:4+fill")


def test_span_filling_gives_the_attack_no_equations(cands):
    """The default (mix:4+fill) on the same short calls: every call's rows span the width, so the known
    text gives no equation and there is nothing to estimate the mask from, nor to read later calls with.
    Control: the *true* mask still reads them (filling hides the mask, not the tokens from whoever holds
    it), so the attack fails for want of the mask alone."""
    v = short_victim(DEFAULT_MASKS, DEFAULT_DEFENCE)
    res = subspace.subspace_attack(v, cands, known_calls=KNOWN)
    assert res["informative_known_calls"] == 0 and all(s == D for s in res["span_dims"])
    assert set(res["rows_per_call"]) == {16 * (1 + 5)}  # 16 tokens: 16 groups of 1 real + 5 random rows
    assert res["calls_needed"] is None and res["mask_error"] is None and res["decoded"] is None
    oracle = subspace.subspace_attack(v, cands, known_calls=KNOWN, oracle_mask=True)
    assert oracle["decoded"]["calls"] == 3 and oracle["decoded"]["bag_recall"] >= 0.95


def test_too_few_known_calls_leave_the_mask_undetermined(cands):
    """Negative control: 6 known calls give fewer independent equations than d^2 unknowns."""
    v = short_victim(DEFAULT_MASKS, "mix:4")
    res = subspace.subspace_attack(v, cands, known_calls=6)
    assert res["calls_needed"] is None
    assert not res["determined"]
    assert res["mask_error"] > 0.5


def test_calls_spanning_the_width_give_no_equations(cands):
    """Negative control: the suite's calls (8 x 16 rows, 160 sent rows > d) span the whole space."""
    v = victim(DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
    res = subspace.subspace_attack(v, cands, known_calls=3)
    assert res["informative_known_calls"] == 0
    assert all(s == D for s in res["span_dims"])
    assert res["mask_error"] is None and res["calls_needed"] is None and res["decoded"] is None


def test_without_mixing_it_works_too(cands):
    res = subspace.subspace_attack(short_victim(DEFAULT_MASKS, "none"), cands, known_calls=KNOWN)
    assert res["mask_error"] < 1e-3 and res["decoded"]["bag_recall"] >= 0.95


def _planted(d=12, rows=30, calls=10, per_call=4, noise=1, seed=0):
    """Known rows, a secret orthogonal R and per call the span of [X_c R; noise rows] (no enclave)."""
    r = haar_orthogonal(CsprngStream(bytes(32), f"planted{seed}"), d)
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, d, generator=g, dtype=torch.float64)
    spans, ids = [], []
    for _ in range(calls):
        i = torch.randperm(rows, generator=g)[:per_call]
        z = torch.cat([table[i] @ r, torch.randn(noise, d, generator=g, dtype=torch.float64)])
        spans.append(subspace.CallSpan(subspace.row_basis(z), subspace.row_basis(table[i]), len(z)))
        ids.append(i)
    return r, table, spans, ids


def test_planted_mask_is_the_null_vector():
    r, _, spans, _ = _planted()
    est = subspace.estimate_mask(spans, 12)
    assert est.determined
    assert subspace.scored_error(est.q, r) < 1e-8
    wrong = haar_orthogonal(CsprngStream(bytes(32), "other"), 12)
    assert subspace.scored_error(wrong, r) > 0.5  # the score can fail


def test_decoding_needs_the_right_mask():
    r, table, _, _ = _planted()
    z = torch.cat([table[[3, 7]] @ r, torch.randn(1, 12, dtype=torch.float64)])
    z = torch.randn(3, 3, dtype=torch.float64) @ z  # one mixed group of 2 rows + a noise row
    assert sorted(subspace.decode_call(z, r, table, 3, 2)) == [3, 7]
    wrong = haar_orthogonal(CsprngStream(bytes(32), "other"), 12)
    assert subspace.decode_call(z, wrong, table, 3, 2) == []


def test_second_moment_attack_needs_far_more_rows_than_a_session_sends(cands):
    """Planted: 100k unmixed rows drawn from the public prior itself let the eigenvectors match (with the
    best signs); the default's recorded session (400 mixed rows) gives an unrelated rotation."""
    from helpers_attacks import prior

    from p3eft.attacks import covariance

    p = prior()
    r = haar_orthogonal(CsprngStream(bytes(32), "cov"), D)
    ids = torch.multinomial(p, 100_000, replacement=True, generator=torch.Generator().manual_seed(0))
    planted = covariance.eigen_mask(cands[ids] @ r, covariance.public_second_moment(cands, p), r)
    assert planted["mean_abs_cos"] > 0.95 and planted["mask_error_best_signs"] < 0.3
    res = covariance.covariance_attack(victim(DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE), p, cands)
    assert res["mask_error_best_signs"] > 1.0 and res["mean_abs_cos"] < 0.5
