"""Build the three parties in one process: model owner -> enclave -> untrusted cloud.

The model owner's side is :func:`provision_model`: it streams the plaintext config and state dict to
the enclave through a channel, in slices of bounded size, so the same code provisions a networked
enclave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p3eft.channel import Channel, InProcessChannel
from p3eft.models import LoadedModel, load_causal_lm
from p3eft.obfuscatune.cloud import UntrustedCloud
from p3eft.obfuscatune.enclave import Enclave, EnclaveSettings

PROVISION_CHUNK_BYTES = 32 * 2**20  # ours: bytes of state-dict tensors per provision message


@dataclass
class ObfuscaTuneSession:
    """The in-process trio; tests may look inside, drivers use only ``enclave_channel``."""

    enclave_channel: Channel
    enclave: Enclave
    cloud: UntrustedCloud
    cloud_channel: InProcessChannel
    loaded: LoadedModel | None


def provision_model(
    enclave: Channel,
    model: torch.nn.Module,
    *,
    name: str = "",
    weights_random: bool = False,
    chunk_bytes: int = PROVISION_CHUNK_BYTES,
    refresh: bool = False,
) -> dict:
    """The model owner's upload: config, then the state dict in slices of at most ``chunk_bytes``.
    ``refresh`` re-provisions a live enclave under fresh masks (its adapters are carried over)."""
    cfg = model.config.to_dict()
    enclave.call(
        "provision",
        config=_jsonable(cfg),
        meta={"name": name, "weights_random": bool(weights_random)},
        refresh=refresh,
    )
    batch: dict[str, torch.Tensor] = {}
    size = 0
    for key, t in model.state_dict().items():
        nbytes = t.numel() * t.element_size()
        if batch and size + nbytes > chunk_bytes:
            enclave.call("provision", tensors=batch)
            batch, size = {}, 0
        batch[key] = t
        size += nbytes
    return enclave.call("provision", tensors=batch, done=True)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def session_from_model(
    model: torch.nn.Module,
    settings: EnclaveSettings | None = None,
    *,
    name: str = "",
    weights_random: bool = False,
    cloud_device: str | None = None,
    loaded: LoadedModel | None = None,
    restore: dict | None = None,
) -> ObfuscaTuneSession:
    """Trio around an already loaded model (the model owner's copy is left untouched). ``restore`` is a
    sealed enclave checkpoint, applied before provisioning so that the session's masks are the saved ones."""
    cloud = UntrustedCloud(device=cloud_device)
    cloud_channel = InProcessChannel(cloud)
    enclave = Enclave(cloud_channel, settings or EnclaveSettings())
    enclave_channel = InProcessChannel(enclave)
    if restore is not None:
        enclave_channel.call("load_state", state=restore)
    provision_model(enclave_channel, model, name=name, weights_random=weights_random)
    return ObfuscaTuneSession(enclave_channel, enclave, cloud, cloud_channel, loaded)


def in_process_session(
    model_name: str,
    settings: EnclaveSettings | None = None,
    *,
    cloud_device: str | None = None,
    restore: dict | None = None,
) -> ObfuscaTuneSession:
    """Load ``model_name`` from the registry (random weights from its config when none are available,
    flagged) and build the trio around it."""
    settings = settings or EnclaveSettings()
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    loaded = load_causal_lm(model_name, dtype=dtype, allow_random=True)
    return session_from_model(
        loaded.model,
        settings,
        name=loaded.spec.name,
        weights_random=loaded.weights_random,
        cloud_device=cloud_device,
        loaded=loaded,
        restore=restore,
    )
