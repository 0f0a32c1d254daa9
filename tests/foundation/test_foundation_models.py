"""The model registry and loaders: names, parameter counts from configs, random-vs-real flags, local folders."""

from __future__ import annotations

import shutil

import pytest
import torch

from p3eft.errors import MissingResourceError, P3eftError, UnknownNameError
from p3eft.models import (
    count_parameters,
    get_spec,
    list_models,
    load_causal_lm,
    load_sequence_classifier,
    parameter_count_from_config,
)


def test_registry_names_and_unknown():
    names = [s.name for s in list_models()]
    assert names[:2] == ["smollm2-135m", "minilm-l6"]
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "bert-tiny"} <= set(names)
    with pytest.raises(UnknownNameError, match="known models: smollm2-135m"):
        get_spec("gpt5")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("smollm2-135m", 134_515_008),  # the packaged GGUF's config (docs/models.md)
        ("minilm-l6", 22_713_216),  # the packaged model's config (docs/models.md)
        ("gpt2", 124_439_808),
        ("gpt2-xl", 1_557_611_200),
        ("bert-tiny", 4_385_920),
    ],
)
def test_parameter_counts_from_config(name, params):
    assert parameter_count_from_config(get_spec(name)) == params


def test_gpt2_without_weights_is_random_seeded_and_flagged(monkeypatch, tmp_path):
    monkeypatch.delenv("P3EFT_ALLOW_HUB", raising=False)
    monkeypatch.setenv("P3EFT_MODELS", str(tmp_path))  # empty: no local copy
    lm = load_causal_lm("gpt2")
    assert lm.weights_random and "random" in lm.source
    assert lm.describe()["weights_random"] is True
    assert lm.tokenizer("Hello world")["input_ids"] == [15496, 995]  # the real GPT-2 BPE
    with pytest.raises(MissingResourceError, match="P3EFT_ALLOW_HUB"):
        load_causal_lm("gpt2", allow_random=False)


def test_bert_tiny_classifier_random_with_uncased_vocab():
    m = load_sequence_classifier("bert-tiny")
    assert m.weights_random and m.model.config.num_labels == 2
    assert m.tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    again = load_sequence_classifier("bert-tiny").model  # random init is seeded: same weights every time
    assert all(
        torch.equal(a, b)
        for a, b in zip(m.model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(P3eftError, match="not a causal LM"):
        load_causal_lm("bert-tiny")


def test_local_folder_and_user_models_dir(tiny_gpt2_dir, monkeypatch, tmp_path):
    lm = load_causal_lm(tiny_gpt2_dir)
    assert not lm.weights_random and lm.spec.family == "gpt2" and str(tiny_gpt2_dir) in lm.source
    with pytest.raises(MissingResourceError):
        load_causal_lm(tiny_gpt2_dir / "missing")
    # A registry name resolves to $P3EFT_MODELS/<name> when the user has a copy there.
    shutil.copytree(tiny_gpt2_dir, tmp_path / "gpt2")
    monkeypatch.setenv("P3EFT_MODELS", str(tmp_path))
    mine = load_causal_lm("gpt2")
    assert not mine.weights_random and mine.model.config.n_embd == 32


@pytest.mark.slow
def test_smollm2_real_weights_greedy_paris():
    lm = load_causal_lm("smollm2-135m")
    assert not lm.weights_random and count_parameters(lm.model) == 134_515_008
    ids = lm.tokenizer("The capital of France is", return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1] :])


@pytest.mark.slow
def test_minilm_classifier_real_body():
    m = load_sequence_classifier("minilm-l6")
    assert not m.weights_random and m.spec.family == "bert"
    assert count_parameters(m.model.bert) == 22_713_216


def _hub_flags() -> tuple[str | None, bool]:
    import os

    import huggingface_hub.constants

    return os.environ.get("HF_HUB_OFFLINE"), bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@pytest.mark.parametrize("allow", ["", "1"])
def test_loads_are_offline_unless_the_user_allows_the_hub(allow, tiny_gpt2_dir, monkeypatch):
    """Importing p3eft.models changes no process setting; each load is offline for its own duration,
    unless P3EFT_ALLOW_HUB=1, where loads leave the hub settings alone and hub ids become a source."""
    import transformers

    from p3eft.models import real_weights_location

    monkeypatch.setenv("P3EFT_ALLOW_HUB", allow)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("P3EFT_MODELS", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    before = _hub_flags()
    assert before == (None, False)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(_hub_flags())
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_causal_lm(tiny_gpt2_dir)
    assert _hub_flags() == before  # the process's settings are back
    where = real_weights_location(get_spec("gpt2"))
    if allow:
        assert seen == [before]  # the user's own settings, untouched
        assert where == "hub openai-community/gpt2"
    else:
        assert seen == [("1", True)]  # no download can start during the load
        assert where is None
