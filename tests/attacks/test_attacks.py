"""Each attack succeeds against the undefended configuration (so a broken attack cannot pass) and
fails against the default (fresh row mixing + structured masks, strict mode)."""

import pytest
import torch
from helpers_attacks import prior, public_model, victim

from p3eft.attacks import gradients, tokens, weights
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, DEFAULT_MODE

DEFAULT = (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
MARGIN = 0.05  # the goal: no better than the unigram prior + 5 points


@pytest.fixture(scope="module")
def cands():
    return tokens.candidate_table(public_model())


@pytest.mark.parametrize(
    "config",
    [
        ("strict", "orthogonal", "none"),
        ("strict", "kron:4", "none"),
        ("strict", "blockperm:8", "none"),
        ("paper", "orthogonal", "none"),
    ],
)
def test_gram_attack_recovers_prompts_through_orthogonal_masks(config, cands):
    res = tokens.gram_attack(victim(*config), prior(), cands)
    assert res["token_recovery"] >= 0.95, res["token_recovery"]


def test_gram_attack_fails_against_the_default(cands):
    res = tokens.gram_attack(victim(*DEFAULT), prior(), cands)
    assert res["token_recovery"] <= res["unigram_baseline"] + MARGIN
    assert res["bag_recall"] <= res["bag_unigram_baseline"] + 2 * MARGIN  # even ignoring positions


def test_gram_attack_fails_on_a_non_orthogonal_mask_but_least_squares_needs_only_d_rows(cands):
    v = victim("strict", "cond:100", "none")
    assert tokens.gram_attack(v, prior(), cands)["token_recovery"] <= 0.05
    kp = weights.rows_needed(v)
    assert kp["rows_needed"] is not None and kp["rows_needed"] <= 4 * 64  # a fixed mask is no way out


def test_clear_q_gives_paper_mode_prompts_away_and_mixing_hides_them(cands):
    assert tokens.qkv_attack(victim("paper", "orthogonal", "none"), prior(), cands)["token_recovery"] >= 0.95
    mixed = tokens.qkv_attack(victim("paper", "orthogonal", DEFAULT_DEFENCE), prior(), cands)
    assert mixed["token_recovery"] <= mixed["unigram_baseline"] + MARGIN


def test_weights_leak_through_activations_undefended_not_by_default(cands):
    for config in [("strict", "orthogonal", "none"), ("strict", DEFAULT_MASKS, "none")]:
        v = victim(*config)
        guesses = tokens.gram_attack(v, prior(), cands)["guesses"]
        assert max(weights.known_plaintext_weights(v, guesses).values()) > 0.1, config
    v = victim(*DEFAULT)
    guesses = tokens.gram_attack(v, prior(), cands)["guesses"]
    assert max(weights.known_plaintext_weights(v, guesses).values()) <= 0.05
    assert max(weights.weights_alone(v).values()) <= 0.05


def test_one_sided_paper_masks_give_weights_away_from_the_weights_alone():
    assert max(weights.weights_alone(victim("paper", "orthogonal", "none")).values()) > 0.1
    assert max(weights.weights_alone(victim("strict", "orthogonal", "none")).values()) <= 0.05


def test_known_plaintext_recovers_a_static_mask_only_without_mixing():
    undefended = weights.rows_needed(victim("strict", "orthogonal", "none"))
    assert undefended["rows_needed"] is not None and undefended["final_error"] <= 0.01
    assert weights.rows_needed(victim(*DEFAULT))["rows_needed"] is None


def test_loss_span_is_read_from_gradients_undefended_not_by_default():
    und = gradients.loss_span_attack(victim("strict", "orthogonal", "none"))
    assert und["loss_span_accuracy"] == 1.0 and und["majority_baseline"] < 0.9
    dflt = gradients.loss_span_attack(victim(*DEFAULT))
    assert dflt["loss_span_accuracy"] <= dflt["majority_baseline"] + MARGIN


def test_rho_scores_the_share_of_the_delta():
    g = torch.Generator().manual_seed(0)
    w_pub = torch.randn(8, 8, generator=g, dtype=torch.float64)
    w = w_pub + 0.1 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    assert weights.rho(w, w, w_pub) == 1.0
    assert weights.rho(w_pub, w, w_pub) == 0.0
    assert abs(weights.rho((w + w_pub) / 2, w, w_pub) - 0.5) < 1e-12


def test_suite_writes_table_and_json_with_the_default_keys(tmp_path):
    """The suite on the tiny victim: JSON with the ``default.*`` keys, goals met by the default and
    missed by the undefended configuration, and the Markdown table."""
    import json
    from types import SimpleNamespace

    from helpers_attacks import traffic
    from helpers_obf import batch

    from p3eft.attacks.suite import SuiteConfig, run_suite, write

    cfg = SuiteConfig(
        model="tiny", modes=["strict"], masks=["orthogonal"], defences=["none"], deltas=[0.01, 0.1]
    )
    loaded = SimpleNamespace(model=public_model(), spec=SimpleNamespace(name="tiny"), weights_random=True)
    prior_text = [batch(9, 8, 16)["input_ids"].flatten().tolist()]
    result = run_suite(cfg, progress=False, loaded=loaded, traffic=traffic(), prior_text=prior_text)
    write(result, tmp_path / "a.json", tmp_path / "rep")
    data = json.loads((tmp_path / "a.json").read_text())
    d = data["default"]
    for key in ("token_recovery", "unigram_baseline", "weight_rho", "enclave_share_of_arithmetic_gpt2_xl"):
        assert key in d
    assert d["goals"]["tokens"] and d["goals"]["weights"] and d["goals"]["loss_span"]
    # measured from the GPT2-XL split at the suite's calls (8 x 64 rows), where span filling makes the
    # accelerator compute several times its work (random rows) and the enclave mix them
    assert d["rows_per_call"] == 8 * 64 and d["accelerator_noise_overhead"] > 1.0
    assert d["goals"]["enclave_cost"] == (d["enclave_vs_accelerator_gpt2_xl"] <= 0.10)
    undefended = next(r for r in data["results"] if r["defence"] == "none")
    assert undefended["goals"]["tokens"] is False and undefended["goals"]["loss_span"] is False
    assert undefended["headline"]["static_rows_needed"] is not None  # the static mask falls to known rows
    assert undefended["headline"]["static_calls_needed"] == 1
    assert d["static_rows_needed"] is None and d["static_calls_needed"] is None
    assert undefended["by_delta"]["0.1"].keys() >= {"weights", "structure"}  # weight attacks per delta
    # the subspace attack (one prompt per call: 16 calls, 12 known) reads the undefended victim's later
    # calls; span filling (the default) leaves it no equation
    u = undefended["headline"]
    assert u["subspace_mask_error"] < 1e-3 and u["subspace_bag_recall"] > 0.9
    assert undefended["goals"]["tokens_known_plaintext"] is False
    assert d["subspace_informative_calls"] == 0 and d["subspace_mask_error"] is None
    assert d["goals"]["tokens_known_plaintext"] is True
    table = (tmp_path / "rep" / "attacks.md").read_text()
    assert (
        f"| strict **(default)** | {DEFAULT_MASKS} | {DEFAULT_DEFENCE} |" in table
        and "| strict | orthogonal | none |" in table
    )
    assert "subspace: known rows (calls)" in table
