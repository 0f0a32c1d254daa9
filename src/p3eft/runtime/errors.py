"""Errors of the network runtime, and how an error crosses a link.

A server turns a :class:`~p3eft.errors.P3eftError` raised by a role into an error frame carrying
its class name and message; the client raises the same class again, so a user sees one clear line
whichever process refused. Anything else that fails in the server is a bug there and reaches the
client as :class:`RemoteError` (the server keeps the traceback in its own log).
"""

from __future__ import annotations

import p3eft.errors as base
from p3eft.errors import P3eftError


class RemoteError(P3eftError):
    """The remote party failed with an unexpected (non-user) error."""


class PartyUnavailableError(P3eftError):
    """The remote party cannot be reached (not started, killed, TLS refused, timed out)."""


_KNOWN: dict[str, type[P3eftError]] = {
    cls.__name__: cls
    for cls in (
        base.P3eftError,
        base.UnknownNameError,
        base.MissingResourceError,
        base.ProtocolError,
        base.SecurityError,
        RemoteError,
        PartyUnavailableError,
    )
}


def register_error(cls: type[P3eftError]) -> type[P3eftError]:
    """Let an error subclass travel across links under its own name (usable as a decorator)."""
    _KNOWN[cls.__name__] = cls
    return cls


def error_payload(err: BaseException) -> dict:
    """The payload of an error frame: class name, message and (for user errors) nothing more."""
    if isinstance(err, P3eftError):
        name = type(err).__name__
        for cls in type(err).__mro__:  # nearest class the client knows
            if cls.__name__ in _KNOWN:
                name = cls.__name__
                break
        return {"type": name, "message": str(err)}
    return {"type": "RemoteError", "message": f"internal error: {type(err).__name__}: {err}"}


def raise_remote(payload: object, party: str) -> None:
    """Re-raise an error frame's payload as the matching local exception."""
    if not isinstance(payload, dict):
        raise RemoteError(f"{party} sent a malformed error frame")
    cls = _KNOWN.get(str(payload.get("type")), RemoteError)
    raise cls(f"{party}: {payload.get('message', '')}")
