"""LoRA through the boundary: one obfuscated step equals the plain PEFT step after mapping; export reloads."""

import pytest
import torch
from helpers_obf import batch, plain_peft, tiny_gpt2, tiny_llama

from p3eft.errors import ProtocolError, SecurityError
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, EnclaveSettings
from p3eft.obfuscatune.session import session_from_model


def _plain_sgd_steps(peft_model, batches, lr, momentum):
    """Plain PEFT SGD steps; returns the losses and the gradient norm of the first step."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    losses, first_grad_norm = [], None
    for data in batches:
        opt.zero_grad()
        loss = _causal_lm_loss(peft_model, data)
        loss.backward()
        if first_grad_norm is None:
            first_grad_norm = _norm({i: p.grad for i, p in enumerate(params) if p.grad is not None})
        opt.step()
        losses.append(loss.item())
    return losses, first_grad_norm


def _causal_lm_loss(model, data):
    """transformers' causal-LM loss from the full logits, but in the logits' own precision: its own
    ``.loss`` casts float64 logits down to float32, which would cap the float64 checks at ~1e-7."""
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), data["labels"][:, 1:].reshape(-1), ignore_index=-100
    )


def _norm(tensors):
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def _compare(export, peft_model, tol):
    from peft import get_peft_model_state_dict

    plain = get_peft_model_state_dict(peft_model)
    assert set(plain) == set(export["tensors"])
    worst = max((export["tensors"][k].to(v.dtype) - v).abs().max().item() for k, v in plain.items())
    assert worst <= tol, worst
    return worst


@pytest.mark.parametrize(
    "family,mode,masks,dtype,tol,defence",
    [  # the default defence (span filling: the tiny batches are short calls) and plain row mixing
        ("gpt2", "strict", "orthogonal", "float64", 1e-9, DEFAULT_DEFENCE),
        ("gpt2", "strict", "orthogonal", "float64", 1e-9, "mix:4"),
        ("gpt2", "paper", "orthogonal", "float64", 1e-9, DEFAULT_DEFENCE),
        ("gpt2", "strict", "kron:4", "float64", 1e-9, DEFAULT_DEFENCE),
        ("gpt2", "strict", DEFAULT_MASKS, "float64", 1e-9, DEFAULT_DEFENCE),  # the default, whole
        ("llama", "strict", DEFAULT_MASKS, "float32", 1e-3, DEFAULT_DEFENCE),
        ("gpt2", "strict", "orthogonal", "float32", 1e-3, DEFAULT_DEFENCE),
        ("llama", "strict", "orthogonal", "float32", 1e-3, DEFAULT_DEFENCE),
    ],
)
def test_obfuscated_step_equals_plain_step_after_mapping(family, mode, masks, dtype, tol, defence):
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    model = tiny_gpt2(tdtype) if family == "gpt2" else tiny_llama(tdtype)
    settings = EnclaveSettings(mode=mode, masks=masks, dtype=dtype, lora_dropout=0.0, defence=defence)
    s = session_from_model(model, settings)
    ch = s.enclave_channel
    lr = 0.5
    ch.call("configure_training", optimizer="sgd", lr=lr, momentum=0.9)
    start = ch.call("export_adapter")
    peft_model = plain_peft(model, start)  # same starting point, plain coordinates
    peft_model.train()
    data = [batch(seed=i) for i in range(3)]
    losses = [ch.call("train_step", **data[0])["loss"]]
    after_one = ch.call("export_adapter")["tensors"]
    losses += [ch.call("train_step", **d)["loss"] for d in data[1:]]
    plain_losses, grad_norm = _plain_sgd_steps(peft_model, data, lr=lr, momentum=0.9)
    assert losses == pytest.approx(plain_losses, abs=tol)
    # The step moved the adapter by what SGD prescribes (first step: lr * gradient, momentum not yet
    # built up), and by far more than the tolerance, so the equality below can fail for a wrong step.
    move = {k: after_one[k] - v for k, v in start["tensors"].items()}
    assert _norm(move) == pytest.approx(lr * grad_norm, rel=1e-3)
    assert max(t.abs().max().item() for t in move.values()) > 10 * tol
    _compare(ch.call("export_adapter"), peft_model, tol)


def test_exported_adapter_reloads_in_peft_and_matches(tmp_path):
    from peft import PeftModel

    from p3eft.obfuscatune.export import save_exported_adapter

    model = tiny_gpt2(torch.float32)
    s = session_from_model(model, EnclaveSettings(lora_dropout=0.0))
    ch = s.enclave_channel
    ch.call("configure_training", optimizer="adamw", lr=1e-2)
    for i in range(3):
        ch.call("train_step", **batch(seed=i))
    folder = save_exported_adapter(ch.call("export_adapter"), tmp_path / "adapter", meta={"model": "tiny"})
    assert (folder / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(tiny_gpt2(torch.float32), str(folder)).eval()
    data = batch(seed=9)
    ours = ch.call("logits", input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    ref = reloaded(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    base = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (ours - base).abs().max().item() > 1e-3  # the adapter changed something


def test_checkpoint_restores_session_exactly():
    model = tiny_gpt2(torch.float64)
    key = b"K" * 32
    settings = EnclaveSettings(dtype="float64", sealing_key=key, lora_dropout=0.1)
    s = session_from_model(model, settings)
    ch = s.enclave_channel
    ch.call("configure_training", optimizer="adamw", lr=1e-2)
    ch.call("train_step", **batch(seed=0))
    ckpt = ch.call("state")
    assert set(ckpt) == {"sealed", "step"}
    assert b"K" * 32 not in ckpt["sealed"] and s.enclave._secret not in ckpt["sealed"]
    cont = [ch.call("train_step", **batch(seed=i))["loss"] for i in (1, 2)]

    # a fresh trio (fresh session secret) restored from the checkpoint continues identically
    from p3eft.channel import InProcessChannel
    from p3eft.obfuscatune.cloud import UntrustedCloud
    from p3eft.obfuscatune.enclave import Enclave
    from p3eft.obfuscatune.session import provision_model

    enclave = Enclave(
        InProcessChannel(UntrustedCloud()),
        EnclaveSettings(dtype="float64", sealing_key=key, lora_dropout=0.1),
    )
    ech = InProcessChannel(enclave)
    ech.call("load_state", state=ckpt)
    provision_model(ech, model)
    again = [ech.call("train_step", **batch(seed=i))["loss"] for i in (1, 2)]
    assert again == cont

    wrong = Enclave(InProcessChannel(UntrustedCloud()), EnclaveSettings(sealing_key=b"X" * 32))
    with pytest.raises(SecurityError):
        wrong.load_state(ckpt)
    with pytest.raises(ProtocolError):
        ch.call("load_state", state={"sealed": _reseal_other(key)})


def _reseal_other(key):
    """A sealed state for another session secret (so it cannot apply to a provisioned enclave)."""
    import os
    import pickle

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    inner = {
        "secret": b"z" * 32,
        "epoch": 0,
        "step": 0,
        "rng": torch.get_rng_state().numpy().tobytes(),
        "train_cfg": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, "max_grad_norm": 0.0},
        "settings": {},
    }
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, pickle.dumps(inner), b"p3eft-enclave-state")


def test_unprovisioned_enclave_refuses_clearly():
    from p3eft.channel import InProcessChannel
    from p3eft.obfuscatune.cloud import UntrustedCloud
    from p3eft.obfuscatune.enclave import Enclave

    ch = InProcessChannel(Enclave(InProcessChannel(UntrustedCloud())))
    with pytest.raises(ProtocolError, match="provision"):
        ch.call("train_step", **batch())


def test_mask_refresh_keeps_the_model_and_changes_the_coordinates():
    from p3eft.obfuscatune.session import provision_model

    model = tiny_gpt2(torch.float64)
    s = session_from_model(model, EnclaveSettings(dtype="float64", lora_dropout=0.0))
    ch = s.enclave_channel
    ch.call("configure_training", optimizer="sgd", lr=0.5)
    for i in range(2):
        ch.call("train_step", **batch(seed=i))
    data = batch(seed=7)
    before = ch.call("logits", input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    w_before = s.cloud.layers["h.0.attn_in"][0].weight.clone()
    a_before = ch.call("export_adapter")["tensors"]
    provision_model(ch, model, refresh=True)
    assert s.enclave.epoch == 1
    after = ch.call("logits", input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    assert (after - before).abs().max().item() <= 1e-9  # same function (adapters carried over exactly)
    assert not torch.allclose(s.cloud.layers["h.0.attn_in"][0].weight, w_before)  # new coordinates
    a_after = ch.call("export_adapter")["tensors"]
    assert all((a_after[k] - a_before[k]).abs().max().item() <= 1e-9 for k in a_before)
    ch.call("train_step", **batch(seed=3))  # training goes on under the new masks


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_enclave_loss_runs_the_head_only_where_labels_are(family):
    """The enclave's training loss equals the full-logits loss (value and every gradient, float64),
    while the LM head sees only the positions with a next-token label (here 21 of 3 x 12)."""
    from p3eft.obfuscatune.enclave import labelled_positions_loss

    make = tiny_gpt2 if family == "gpt2" else tiny_llama
    ref_model, model = make(), make()
    b = batch()
    hf_own = float(ref_model(**b).loss.detach())  # computed in float32 by transformers
    ref = _causal_lm_loss(ref_model, b)
    ref.backward()
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    loss = labelled_positions_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
    hook.remove()
    loss.backward()
    labelled = int((b["labels"][:, 1:] != -100).sum())
    assert rows == [labelled] and labelled < b["input_ids"].numel()
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-12
    assert abs(float(loss.detach()) - hf_own) < 1e-6
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        if q.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-12), name


def test_the_enclave_scores_with_the_head_only_at_the_asked_positions():
    """``continuation_logits`` returns the split model's logits at the marked positions, equal to the
    plain model's there, with the LM head run on those rows only; a mask of another shape is refused."""
    model = tiny_gpt2()
    s = session_from_model(tiny_gpt2(), EnclaveSettings(dtype="float64"))
    b = batch()
    positions = b["labels"] != -100
    rows = []
    head = s.enclave.split.enclave_model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    got = s.enclave_channel.call(
        "continuation_logits",
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        positions=positions,
    )
    hook.remove()
    with torch.no_grad():
        want = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[positions]
    assert rows == [int(positions.sum())] and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-9)
    with pytest.raises(ProtocolError, match="shape of input_ids"):
        s.enclave_channel.call(
            "continuation_logits",
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            positions=positions[:, 1:],
        )
