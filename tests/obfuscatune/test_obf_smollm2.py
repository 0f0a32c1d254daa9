"""The real SmolLM2-135M weights through the split (fp32): orthogonal <= 1e-3, naive >= 10x worse."""

import pytest
import torch

from p3eft.obfuscatune.enclave import EnclaveSettings
from p3eft.obfuscatune.run import verification_batch
from p3eft.obfuscatune.session import session_from_model


@pytest.mark.slow
def test_smollm2_real_weights_orthogonal_vs_naive():
    from p3eft.models import load_causal_lm

    loaded = load_causal_lm("smollm2-135m", dtype=torch.float32, allow_random=False)
    assert not loaded.weights_random
    batch = verification_batch(loaded.tokenizer, n=4)
    with torch.no_grad():
        ref = loaded.model(**batch).logits
    valid = batch["attention_mask"].bool()
    diffs = {}
    for masks in ("orthogonal", "naive"):
        s = session_from_model(loaded.model, EnclaveSettings(masks=masks), name="smollm2-135m")
        diffs[masks] = float((s.enclave_channel.call("logits", **batch) - ref)[valid].abs().max())
        del s
    assert diffs["orthogonal"] <= 1e-3, diffs
    assert diffs["naive"] >= 10 * diffs["orthogonal"], diffs
