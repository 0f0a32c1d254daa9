"""The model owner's side: verify the enclave, then stream the model to it.

The weights leave this process only on an attested session (every payload AES-GCM-encrypted to the
key the enclave's quote vouched for); the cloud never sees them. The upload itself is ObfuscaTune's
:func:`p3eft.obfuscatune.session.provision_model` (config first, then state-dict slices of bounded
size), so the networked and in-process uploads are the same code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from p3eft.obfuscatune.net.connect import attested_config, open_enclave


def upload(
    model: str,
    enclave_url: str,
    certs: str | Path,
    chunk_mb: int = 32,
    refresh: bool = False,
    expect: str | list[str] | None = None,
) -> dict[str, Any]:
    """Load ``model`` (registry name or folder), attest the enclave, provision it; return a summary.

    ``refresh`` re-provisions a live enclave so that it draws a new mask epoch (ObfuscaTune keeps no
    plaintext weights in the enclave, so the model owner sends them again; adapters carry over).
    The weights are loaded in the dtype the enclave attested, and only to an enclave whose attested
    configuration meets ``expect`` (default: strict mode, the default masks and defence, a seed of its own).
    """
    from p3eft.models import load_causal_lm
    from p3eft.obfuscatune.session import provision_model

    # attest first: a wrong address or a failed quote should not wait for the model to load
    with open_enclave(enclave_url, certs, expect, party="model-owner", resilient=False) as channel:
        config = attested_config(channel)
        dtype = torch.float64 if config.get("dtype") == "float64" else torch.float32
        loaded = load_causal_lm(model, dtype=dtype)
        t0 = time.perf_counter()
        info = provision_model(
            channel,
            loaded.model,
            name=loaded.spec.name,
            weights_random=loaded.weights_random,
            chunk_bytes=chunk_mb * 2**20,
            refresh=refresh,
        )
        sent = channel.stats.bytes_sent
    return {
        "model": loaded.spec.name,
        "weights_random": loaded.weights_random,
        "source": loaded.source,
        "bytes_sent": sent,
        "seconds": time.perf_counter() - t0,
        "enclave": info,
        "attested": config,
    }
