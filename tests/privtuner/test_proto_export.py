"""Export policy: a decrypted adapter becomes a standard PEFT folder that plain peft reloads with the
same logits as the adapter applied by hand (merged LoRA weights, replaced head)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

from p3eft.errors import P3eftError, ProtocolError
from p3eft.privtuner.export import export_adapter, exported_arrays, exported_meta, load_exported

RANK, ALPHA = 4, 8.0


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(cfg).eval()


def _adapter(base) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    h = base.config.hidden_size
    out = {}
    for i in range(base.config.num_hidden_layers):
        for m in ("query", "value"):
            out[f"encoder.layer.{i}.attention.self.{m}.lora_A.weight"] = rng.normal(0, 0.3, (RANK, h))
            out[f"encoder.layer.{i}.attention.self.{m}.lora_B.weight"] = rng.normal(0, 0.3, (h, RANK))
    out["classifier.weight"] = rng.normal(0, 0.3, (2, h))
    out["classifier.bias"] = rng.normal(0, 0.3, (2,))
    return out


def _by_hand(base, adapter) -> torch.nn.Module:
    m = copy.deepcopy(base)
    with torch.no_grad():
        for i, layer in enumerate(m.bert.encoder.layer):
            for name in ("query", "value"):
                a = adapter[f"encoder.layer.{i}.attention.self.{name}.lora_A.weight"]
                b = adapter[f"encoder.layer.{i}.attention.self.{name}.lora_B.weight"]
                lin = getattr(layer.attention.self, name)
                lin.weight += torch.as_tensor((ALPHA / RANK) * b @ a, dtype=lin.weight.dtype)
        m.classifier.weight.copy_(torch.as_tensor(adapter["classifier.weight"]))
        m.classifier.bias.copy_(torch.as_tensor(adapter["classifier.bias"]))
    return m


def test_exported_adapter_reloads_in_peft_with_the_same_logits(tmp_path):
    base = _base()
    adapter = _adapter(base)
    folder = export_adapter(copy.deepcopy(base), adapter, tmp_path / "ad", RANK, ALPHA, {"model": "tiny"})
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert exported_meta(folder)["model"] == "tiny"
    reloaded = load_exported(copy.deepcopy(base), folder)
    ids = torch.tensor([[2, 5, 9, 11, 3], [2, 7, 7, 1, 3]])
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        want = _by_hand(base, adapter)(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really changes the model
    # read back under the model's own names: the adapter as exported (float32), nothing else
    back = exported_arrays(folder)
    assert set(back) == set(adapter)
    for name, value in adapter.items():
        assert back[name].dtype == np.float64
        np.testing.assert_array_equal(back[name], np.asarray(value, dtype=np.float32))
    with pytest.raises(P3eftError):
        exported_arrays(tmp_path)


def test_export_refuses_an_adapter_that_does_not_fit(tmp_path):
    base = _base()
    adapter = _adapter(base)
    del adapter["classifier.bias"]
    with pytest.raises(ProtocolError, match="missing"):
        export_adapter(copy.deepcopy(base), adapter, tmp_path / "x", RANK, ALPHA, {})
    adapter = _adapter(base)
    adapter["classifier.weight"] = np.zeros((3, 16))
    with pytest.raises(ProtocolError, match="shape"):
        export_adapter(copy.deepcopy(base), adapter, tmp_path / "y", RANK, ALPHA, {})
    with pytest.raises(P3eftError):
        load_exported(base, tmp_path / "missing")
