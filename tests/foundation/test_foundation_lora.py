"""LoraSettings: one LoRA config for plain (peft) and obfuscated training, checked against peft itself."""

from __future__ import annotations

import pytest
import torch

from p3eft.errors import P3eftError
from p3eft.tuning import LoraSettings, TrainConfig


def test_update_equals_peft_lora_layer():
    """Our formula (used on the untrusted accelerator) gives peft's output for the same A, B and input."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(12, 7, bias=False))
    lora = LoraSettings(r=4, alpha=10.0, dropout=0.0, target_modules=("proj",))
    peft_model = get_peft_model(base, LoraConfig(**{**lora.peft_kwargs("llama"), "fan_in_fan_out": False}))
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # peft starts B at 0: make the update visible
    a = layer.lora_A["default"].weight.T  # ours stores A as [d_in, r], B as [r, d_out]
    b = layer.lora_B["default"].weight.T
    x = torch.randn(5, 12)
    ours = x @ layer.base_layer.weight.T + lora.update(x, a, b)
    with torch.no_grad():
        assert torch.allclose(layer(x), ours, atol=1e-6)
        assert (lora.update(x, a, b)).abs().max() > 1e-2  # the comparison is not of two zeros
    assert lora.scaling == pytest.approx(layer.scaling["default"]) == 2.5


def test_init_is_pefts_range_and_b_zero():
    lora = LoraSettings(r=8)
    a, b = lora.init_pair(64, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert a.shape == (64, 8) and b.shape == (8, 32) and not b.any()
    assert a.abs().max() <= 1 / 8 and a.abs().max() > 0.9 / 8  # uniform in +-1/sqrt(d_in)


def test_dropout_only_when_training():
    lora = LoraSettings(dropout=0.5)
    x = torch.ones(1000)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(lora.drop(x, train=False, generator=g), x)
    dropped = lora.drop(x, train=True, generator=g)
    assert set(dropped.unique().tolist()) == {0.0, 2.0} and 400 < int((dropped == 0).sum()) < 600


def test_one_object_for_every_place():
    """TrainConfig (plain + CLI), the enclave's settings and an exported adapter agree via LoraSettings."""
    from p3eft.obfuscatune.enclave import EnclaveSettings

    cfg = TrainConfig(rank=4, alpha=8.0, dropout=0.1)
    settings = EnclaveSettings().with_lora(cfg.lora)
    assert settings.lora == cfg.lora == LoraSettings(r=4, alpha=8.0, dropout=0.1)
    assert LoraSettings.from_peft(cfg.lora.peft_kwargs("llama")).r == 4
    assert LoraSettings.from_wire(cfg.lora.to_wire()) == cfg.lora
    assert cfg.lora.targets("gpt2") == ["c_attn", "c_proj", "c_fc"]


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"r": 0}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout")]
)
def test_bad_values_refused(kwargs, needle):
    with pytest.raises(P3eftError, match=needle):
        LoraSettings(**kwargs)
