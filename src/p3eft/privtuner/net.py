"""PrivTuner's parties over the network: the runtime's gRPC + mutual TLS, nothing PrivTuner-specific.

The model owner is a :class:`~p3eft.runtime.server.PartyServer` serving a
:class:`~p3eft.privtuner.roles.ModelOwner`; a data owner opens a
:class:`~p3eft.runtime.client.NetworkChannel` to it and builds its
:class:`~p3eft.privtuner.roles.DataOwner` on that channel, exactly as in process. Only data owners may
call the model owner (certificate common name ``data-owner``); several may be connected at once, each
in its own PrivTuner session.

Certificates come from ``p3eft keys init DIR [--data-owners N]``, one folder per party: the model owner
gets ``DIR/model-owner``, each data owner its own ``DIR/data-owner`` or ``DIR/data-owner-N`` (any of
them may call the model owner). Every use of that layout is in this module (:func:`model_owner_identity`,
:func:`data_owner_identity`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p3eft.errors import MissingResourceError
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.pki import PartyIdentity, is_data_owner, load_identity
from p3eft.runtime.server import PartyServer, ServerConfig

MODEL_OWNER = "model-owner"
DATA_OWNER = "data-owner"
# keys and ciphertexts of the largest parameter sets exceed gRPC's usual limits
DEFAULT_MAX_MESSAGE = 1024 * 2**20


def model_owner_identity(certs: str | Path) -> PartyIdentity:
    """The model owner's identity from its own key folder (``DIR/model-owner``)."""
    return load_identity(certs, MODEL_OWNER)


def data_owner_identity(certs: str | Path) -> PartyIdentity:
    """A data owner's identity from its own key folder (``DIR/data-owner`` or ``DIR/data-owner-N``):
    the one data-owner key pair the folder holds names the party."""
    folder = Path(certs)
    names = sorted(p.stem for p in folder.glob("*.key") if is_data_owner(p.stem))
    if len(names) != 1:
        raise MissingResourceError(
            f"{folder} is not a data owner's key folder (found {len(names)} data-owner keys); "
            "pass DIR/data-owner from `p3eft keys init DIR`"
        )
    return load_identity(folder, names[0])


def model_owner_server(
    role: object,
    certs: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    workers: int = 8,
) -> PartyServer:
    """A (not yet started) server for the model owner's role; only data owners may call it."""
    config = ServerConfig(host, port, max_message_bytes, peer_filter=is_data_owner, workers=workers)
    return PartyServer(role, model_owner_identity(certs), config)


def run_model_owner(
    backend: Any,
    certs: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    idle_timeout_s: float | None = None,
    state_key: bytes | None = None,
    end_policy: str = "export",
    workers: int = 1,
) -> None:
    """``p3eft serve privtuner-model-owner``: one :class:`ModelOwner` for every data owner that connects,
    served until SIGTERM/SIGINT and announced as ``{party, pid, port, url}`` (the runtime's serve loop).
    ``idle_timeout_s``, ``state_key``, ``end_policy`` and ``workers``: see :class:`ModelOwner` (default
    :data:`~p3eft.privtuner.roles.IDLE_TIMEOUT_S`; a random state key per process)."""
    from p3eft.privtuner.roles import IDLE_TIMEOUT_S, ModelOwner
    from p3eft.runtime.launch import serve_until_signal

    timeout = IDLE_TIMEOUT_S if idle_timeout_s is None else idle_timeout_s
    owner = ModelOwner(
        backend, idle_timeout_s=timeout, state_key=state_key, end_policy=end_policy, workers=workers
    )
    server = model_owner_server(owner, certs, host, port, max_message_bytes)
    serve_until_signal(server, MODEL_OWNER, host, ready_file)


def connect_model_owner(
    url: str, certs: str | Path, max_message_bytes: int = DEFAULT_MAX_MESSAGE, **kw: Any
) -> NetworkChannel:
    """The data owner's mutual-TLS channel to the model owner at ``url`` (HOST:PORT)."""
    return NetworkChannel(
        url, data_owner_identity(certs), MODEL_OWNER, max_message_bytes=max_message_bytes, **kw
    )
