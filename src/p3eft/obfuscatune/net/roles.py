"""Role factories that put ObfuscaTune's parties behind the network runtime.

``p3eft serve cloud|enclave`` load a role factory by name; these are the defaults. The enclave
factory passes the host's persistent session seed into
:class:`~p3eft.obfuscatune.enclave.EnclaveSettings`, so masks redrawn after a restart equal the
masks drawn before it (the seed itself is sealed; see :mod:`p3eft.runtime.enclave_host`), and it
says which configuration the enclave's quote binds (:func:`attested_config`).
"""

from __future__ import annotations

from typing import Any

from p3eft.errors import P3eftError

CLOUD_FACTORY = "p3eft.obfuscatune.net.roles:make_cloud"
ENCLAVE_FACTORY = "p3eft.obfuscatune.net.roles:make_enclave"
HOST_SUPPLIED = ("session_seed", "sealing_key")


def make_cloud(device: str | None = None) -> Any:
    """The untrusted accelerator role."""
    from p3eft.obfuscatune.cloud import UntrustedCloud

    return UntrustedCloud(device=device)


def _settings(settings: dict[str, Any]) -> Any:
    from p3eft.obfuscatune.enclave import EnclaveSettings
    from p3eft.obfuscatune.masks import parse_masks
    from p3eft.obfuscatune.mixing import parse_defence
    from p3eft.obfuscatune.split import mask_sides

    bad = [k for k in settings if k in HOST_SUPPLIED]
    if bad:
        raise P3eftError(f"--settings may not set {', '.join(bad)}: the enclave host supplies it")
    try:
        s = EnclaveSettings(**settings)
    except TypeError as err:
        raise P3eftError(f"bad enclave --settings: {err}") from err
    parse_masks(s.masks)
    parse_defence(s.defence)
    mask_sides(s.mode, "attn_in")
    if s.dtype not in ("float32", "float64"):
        raise P3eftError(f"enclave dtype must be float32 or float64, not {s.dtype!r}")
    return s


def make_enclave(cloud: Any, seed: bytes, sealing_key: bytes, **settings: Any) -> Any:
    """The enclave role, bound to its cloud link, the host's sealed session seed and sealing key."""
    from dataclasses import replace

    from p3eft.obfuscatune.enclave import Enclave

    return Enclave(cloud, replace(_settings(settings), session_seed=seed, sealing_key=sealing_key))


def attested_config(**settings: Any) -> dict[str, Any]:
    """The enclave's effective configuration, as its quote binds it: mode, masks, dtype, LoRA."""
    return _settings(settings).public()


make_enclave.attested_config = attested_config  # type: ignore[attr-defined]
