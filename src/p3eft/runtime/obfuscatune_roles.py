"""Role factories that put ObfuscaTune's parties behind the network runtime.

The runtime is scheme-agnostic: ``p3eft serve cloud|enclave`` load a role factory by name. These
are the defaults. The enclave factory passes the host's persistent session seed into
:class:`~p3eft.obfuscatune.enclave.EnclaveSettings`, so masks redrawn after a restart equal the
masks drawn before it (the seed itself is sealed; see :mod:`p3eft.runtime.enclave_host`).
"""

from __future__ import annotations

from typing import Any

CLOUD_FACTORY = "p3eft.runtime.obfuscatune_roles:make_cloud"
ENCLAVE_FACTORY = "p3eft.runtime.obfuscatune_roles:make_enclave"


def make_cloud(device: str | None = None) -> Any:
    """The untrusted accelerator role."""
    from p3eft.obfuscatune.cloud import UntrustedCloud

    return UntrustedCloud(device=device)


def make_enclave(cloud: Any, seed: bytes, sealing_key: bytes, **settings: Any) -> Any:
    """The enclave role, bound to its cloud link, the host's sealed session seed and sealing key."""
    from p3eft.obfuscatune.enclave import Enclave, EnclaveSettings

    return Enclave(cloud, EnclaveSettings(**{**settings, "session_seed": seed, "sealing_key": sealing_key}))
