"""Opening links to an enclave from a data owner's or the model owner's side.

:func:`open_enclave_channel` verifies the enclave's attestation -- its code and, against
``policy``, its configuration -- before it returns (so no payload can leave before that), and it
returns a :class:`~p3eft.runtime.resilient.ResilientChannel`, which works in a job of its own on the
enclave and reconnects, re-attests and replays after the enclave or the cloud restarts.
"""

from __future__ import annotations

from pathlib import Path

from p3eft.channel import Channel
from p3eft.errors import P3eftError
from p3eft.runtime.launch import connect_attested
from p3eft.runtime.resilient import ResilientChannel
from p3eft.runtime.server import DEFAULT_MAX_MESSAGE


def open_enclave_channel(
    url: str,
    certs_dir: str | Path | None,
    party: str = "data-owner",
    resilient: bool = True,
    wait_s: float = 120.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    policy: dict[str, object] | None = None,
    measured_files: tuple[str | Path, ...] = (),
) -> Channel:
    """An attested, encrypted channel to the enclave at ``url`` (raises SecurityError if it fails)."""
    if certs_dir is None:
        raise P3eftError(f"connecting to the enclave at {url} needs --certs (this party's key folder)")

    def connect() -> Channel:
        return connect_attested(
            url, certs_dir, party, max_message_bytes, policy=policy, measured_files=measured_files
        )

    if not resilient:
        return connect()
    return ResilientChannel(connect, wait_s=wait_s)
