"""Structure-aware weight recovery (blockperm) and known-plaintext / many-call estimation of the static
mask: each succeeds against an undefended configuration (so a broken attack cannot pass) and fails
against fresh row mixing / the default."""

import dataclasses

import pytest
import torch
from helpers_attacks import prior, public_model, victim

from p3eft.attacks import static_mask, structured, tokens, weights
from p3eft.attacks.recorder import Crossing, Transcript
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, DEFAULT_MODE

DEFAULT = (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
D = 64  # the tiny model's width


@pytest.fixture(scope="module")
def cands():
    return tokens.candidate_table(public_model())


def _guesses(v, cands):
    return tokens.gram_attack(v, prior(), cands)["guesses"]


def test_blockperm_gives_its_support_away_from_one_sided_weights_alone():
    v = victim("paper", "blockperm:8", "none")
    res = structured.structure_attack(v)
    assert res["support_recovery"]["min"] == 1.0
    assert res["mask_error"]["max"] < 0.01
    dense = weights.weights_alone(v)
    for part, r in res["rho"].items():  # far more of the delta than the dense Procrustes fit learns
        assert r > 0.5 and r > dense[part] + 0.1, (part, r, dense[part])


def test_blockperm_structure_with_decoded_activations_in_strict_mode(cands):
    v = victim("strict", "blockperm:8", "none")
    res = structured.structure_attack(v, _guesses(v, cands))
    assert res["support_recovery"]["min"] == 1.0 and res["mask_error"]["max"] < 0.01
    assert min(res["rho"].values()) > 0.4
    dense = weights.known_plaintext_weights(v, _guesses(v, cands))
    assert max(res["rho"].values()) > max(dense.values()) + 0.1


def test_row_mixing_defeats_the_structure_attack_in_strict_mode(cands):
    v = victim("strict", "blockperm:8", DEFAULT_DEFENCE)
    res = structured.structure_attack(v, _guesses(v, cands))
    assert max(res["rho"].values()) <= 0.05
    assert res["support_recovery"]["mean"] <= 0.05


def test_paper_mode_blockperm_leaks_weights_even_with_mixing():
    """Mixing hides activations, not the one-sided weights: paper mode stays unsafe (documented)."""
    res = structured.structure_attack(victim("paper", "blockperm:8", DEFAULT_DEFENCE))
    assert min(res["rho"].values()) > 0.5


def test_kron_structure_is_found_from_a_dense_mask_estimate_without_mixing(cands):
    """kron: permutations (up to relabelling) from the spectrum, factors from the nearest Kronecker
    product; far more of the delta than the dense fits learn, in both modes."""
    paper = victim("paper", "kron", "none")
    res = structured.structure_attack(paper)
    dense = weights.weights_alone(paper)
    assert max(res["rho"].values()) > 0.8 and max(res["rho"].values()) > max(dense.values()) + 0.2
    assert res["support_recovery"]["mean"] > 0.3  # the square masks' labels
    strict = victim("strict", "kron", "none")
    g = _guesses(strict, cands)
    res = structured.structure_attack(strict, g)
    assert max(res["rho"].values()) > max(weights.known_plaintext_weights(strict, g).values()) + 0.2


def test_the_default_defeats_the_structure_attack(cands):
    v = victim(*DEFAULT)
    res = structured.structure_attack(v, _guesses(v, cands))
    assert res["applicable"] and max(res["rho"].values()) <= 0.05
    assert res["support_recovery"]["mean"] == 0.0  # no Kronecker label partition recovered
    assert structured.structure_attack(victim("strict", "orthogonal", "none"), [])["applicable"] is False


def test_block_fit_recovers_a_planted_blockperm_mask_from_fewer_rows_than_its_width():
    """Direct check of the fit: a random blockperm mask, 24 exact pairs for width 32 (a dense fit
    cannot be unique), support and blocks exact; a dense orthogonal mask does not fit the block model."""
    from p3eft.obfuscatune.masks import parse_masks

    mask = parse_masks("blockperm:4").make(b"k" * 32, "t", 32, torch.float64).matrix()
    x = torch.randn(24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = structured.fit_blockperm(x, x @ mask, 4)
    assert structured.support_rate(fit, mask) == 1.0
    assert structured.mask_error(fit.r, mask) < 1e-10
    dense = parse_masks("orthogonal").make(b"k" * 32, "t", 32, torch.float64).matrix()
    assert structured.mask_error(structured.fit_blockperm(x, x @ dense, 4).r, dense) > 0.5


@pytest.mark.parametrize("n", [64, 96])
def test_kron_fit_recovers_a_planted_kron_mask_from_a_noisy_estimate(n):
    """Direct check: a kron mask plus 0.5% noise is projected back to within 0.1% with every label
    partition right; a dense orthogonal matrix has no Kronecker labels to find."""
    from p3eft.obfuscatune.masks import kron_factors, parse_masks

    mask = parse_masks("kron:16").make(b"k" * 32, "t", n, torch.float64)
    r = mask.matrix()
    noise = torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = r + 0.005 * r.norm() * noise / noise.norm()
    est, rows, cols = structured.fit_kron(c, kron_factors(n, 16))
    assert structured.mask_error(est, r) < 1e-3 < structured.mask_error(c, r)
    assert structured.kron_label_rate(rows, cols, mask) == 1.0
    dense = parse_masks("orthogonal").make(b"k" * 32, "t", n, torch.float64).matrix()
    assert structured.fit_kron(dense, kron_factors(n, 16)) is None


def test_known_plaintext_recovers_a_static_mask_to_1e3_and_structure_needs_fewer_rows(cands):
    dense = static_mask.aligned_rows(victim("strict", "orthogonal", "none"), cands)
    assert dense["rows_needed"] is not None and dense["mask_error"] <= 1e-3
    assert D <= dense["rows_needed"] <= 2 * D  # an orthogonal d x d mask needs about d rows
    block = static_mask.aligned_rows(victim("strict", "blockperm:8", "none"), cands)
    assert block["rows_needed"] is not None and block["rows_needed"] < dense["rows_needed"]
    cond = static_mask.aligned_rows(victim("strict", "cond:100", "none"), cands)
    assert cond["rows_needed"] is not None and cond["rows_needed"] <= 2 * D  # non-orthogonal: least squares


def _shuffled(v):
    """The undefended victim's view if the enclave only shuffled the rows of each call (no mixing)."""
    g = torch.Generator().manual_seed(5)
    crossings = []
    for c in v.transcript.crossings:
        if c.method == "forward" and c.layer == static_mask.LAYER:
            x = c.sent[0].reshape(-1, c.sent[0].shape[-1])
            c = Crossing(c.method, c.layer, c.tag, [x[torch.randperm(len(x), generator=g)]], c.answered)
        crossings.append(c)
    return dataclasses.replace(v, transcript=Transcript(v.transcript.weights, crossings))


def test_many_call_matching_recovers_the_mask_without_row_order_but_not_through_mixing(cands):
    und = victim("strict", "orthogonal", "none")
    assert static_mask.matched_calls(und, cands)["calls_needed"] == 1
    # negative control: shuffled rows defeat the aligned estimator but not the matched one
    shuffled = _shuffled(und)
    assert static_mask.aligned_rows(shuffled, cands)["rows_needed"] is None
    assert static_mask.matched_calls(shuffled, cands)["calls_needed"] == 1
    for config in [DEFAULT, ("strict", "orthogonal", DEFAULT_DEFENCE)]:
        v = victim(*config)
        res = static_mask.static_mask_attack(v, cands)
        assert res["aligned"]["rows_needed"] is None and res["aligned"]["mask_error"] > 0.5, config
        m = res["matched"]
        assert m["calls_needed"] is None and m["calls"] == 3, config  # every call accumulated, no fit
        assert all(e is None or e > 0.5 for e in m["mask_error"]), (config, m)


def test_a_model_cut_to_block_0_gives_the_same_block_0_traffic():
    """The suite runs further deltas' weight attacks on a model cut to block 0 (speed): without mixing
    its block-0 weights and crossings must equal the full model's bit for bit, and the fine-tune drawn
    on the cut model must equal the full one's block 0."""
    from helpers_attacks import traffic

    from p3eft.attacks.victim import Traffic, VictimConfig, first_blocks, proprietary_model, run_victim

    public = public_model()
    cut = first_blocks(public)
    assert len(cut.model.layers) == 1 and len(public.model.layers) == 2
    cfg = VictimConfig("strict", "orthogonal", "none", 0.1)
    t = Traffic(traffic().infer[:1])
    full = run_victim(public, t, cfg)
    part = run_victim(cut, t, cfg, proprietary=proprietary_model(cut, 0.1))
    assert part.num_blocks == 1
    layers = {g.layer for g in part.groups}
    assert {k for k in full.transcript.weights if k[0] in layers} == set(part.transcript.weights)
    for key, w in part.transcript.weights.items():
        assert torch.equal(w, full.transcript.weights[key]), key
    for layer in layers:
        a, b = full.transcript.forwards(layer), part.transcript.forwards(layer)
        assert len(a) == len(b) == 1
        sa, sb = a[0].sent + a[0].answered, b[0].sent + b[0].answered
        assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
        for k, _ in enumerate(part.group(layer).parts):
            assert torch.equal(part.true_weight(layer, k), full.true_weight(layer, k))
