"""Opening links to an enclave from the data owner's or the model owner's side.

:func:`open_enclave_channel` is what ``p3eft obfuscatune finetune|evaluate --enclave URL`` uses: it
verifies the enclave's attestation before it returns (so no payload can leave before that), and it
returns a :class:`~p3eft.runtime.resilient.ResilientChannel`, which reconnects, re-attests and
replays after the enclave or the cloud restarts.
"""

from __future__ import annotations

from pathlib import Path

from p3eft.channel import Channel
from p3eft.runtime.launch import connect_attested
from p3eft.runtime.resilient import ResilientChannel
from p3eft.runtime.server import DEFAULT_MAX_MESSAGE


def open_enclave_channel(
    url: str,
    certs_dir: str | Path,
    party: str = "data-owner",
    resilient: bool = True,
    wait_s: float = 120.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
) -> Channel:
    """An attested, encrypted channel to the enclave at ``url`` (raises SecurityError if it fails)."""

    def connect() -> Channel:
        return connect_attested(url, certs_dir, party, max_message_bytes)

    if not resilient:
        return connect()
    return ResilientChannel(connect, wait_s=wait_s)
