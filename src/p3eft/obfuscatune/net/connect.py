"""The data owner's and model owner's attested link to an ObfuscaTune enclave.

Both verify the enclave's quote against a policy they hold: by default the secure configuration
(strict mode, the default masks and defence of :mod:`p3eft.obfuscatune.enclave`, a session seed the
enclave drew itself); ``--expect KEY=VALUE``
changes or adds keys. What they then print and record is what the enclave attested, never their own
flags (ours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p3eft.channel import Channel
from p3eft.errors import P3eftError
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS

DEFAULT_EXPECT: dict[str, str] = {
    "mode": "strict",
    "masks": DEFAULT_MASKS,
    "defence": DEFAULT_DEFENCE,
    "seed": "random",
}
LORA_KEYS = {"lora_r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}


def policy(expect: str | list[str] | None) -> dict[str, str]:
    """The default policy, updated with ``--expect`` entries (``seed=pinned`` accepts a pinned seed)."""
    from p3eft.runtime.attestation import parse_expect

    return {**DEFAULT_EXPECT, **parse_expect(expect)}


def open_enclave(
    url: str,
    certs: str | Path | None,
    expect: str | list[str] | None = None,
    party: str = "data-owner",
    resilient: bool = True,
) -> Channel:
    """An attested channel to the enclave, in a job of its own (see :mod:`p3eft.runtime.connect`)."""
    try:
        from p3eft.runtime.connect import open_enclave_channel
    except ImportError as err:  # pragma: no cover - the runtime ships with the package
        raise P3eftError(f"--enclave needs the networked runtime, not available: {err}") from None
    return open_enclave_channel(url, certs, party=party, resilient=resilient, policy=policy(expect))


def attested_config(channel: Channel) -> dict[str, Any]:
    """The configuration the enclave's quote vouched for on ``channel``."""
    attested = getattr(channel, "attested", None)
    if attested is None:
        raise P3eftError("the enclave link is not attested")
    return dict(attested.config)


def effective_train_config(channel: Channel, config: Any) -> Any:
    """``config`` with the LoRA settings the enclave attested (they, not the user's flags, apply)."""
    from dataclasses import replace

    cfg = attested_config(channel)
    return replace(config, **{field: cfg[key] for key, field in LORA_KEYS.items() if key in cfg})
