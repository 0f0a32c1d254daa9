"""The one narrow interface through which parties talk (below every scheme and the runtime).

Every party (model owner, data owner, cloud, enclave) is a *role object*. The methods another party
may call are marked with :func:`remote`; a :class:`Channel` calls them by name with keyword
arguments drawn from a small set of payload types (tensors, arrays, numbers, strings, bytes and
lists/dicts of those). Keeping payloads to that set is what lets the same role objects run in one
process (:class:`InProcessChannel`, the default in tests) or as separate processes over the network
(the network channel in :mod:`p3eft.runtime`), with identical numbers.

The in-process channel copies every tensor in both directions, so no object reference -- and no
autograd graph -- crosses a boundary: what one party holds, the other can only have been sent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from p3eft.errors import ProtocolError

Payload = Any  # torch.Tensor | np.ndarray | int | float | bool | str | bytes | None | list | dict[str, ...]

F = TypeVar("F", bound=Callable[..., Any])

_REMOTE_ATTR = "__p3eft_remote__"


def remote(fn: F) -> F:
    """Mark a role method as callable by another party through a :class:`Channel`."""
    setattr(fn, _REMOTE_ATTR, True)
    return fn


def remote_methods(target: object) -> dict[str, Callable[..., Any]]:
    """The methods of ``target`` that :func:`remote` marked, by name."""
    found = {}
    for name, member in inspect.getmembers(type(target), predicate=callable):
        if getattr(member, _REMOTE_ATTR, False):
            found[name] = getattr(target, name)
    return found


def resolve_remote(target: object, method: str) -> Callable[..., Any]:
    """Look up a remotely callable method, refusing anything not marked with :func:`remote`."""
    fn = getattr(type(target), method, None)
    if fn is None or not getattr(fn, _REMOTE_ATTR, False):
        raise ProtocolError(f"{type(target).__name__} has no remote method {method!r}")
    return getattr(target, method)


def copy_payload(value: Payload) -> Payload:
    """Deep-copy a payload, detaching tensors, and refuse types that could not cross a network."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [copy_payload(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ProtocolError("payload dict keys must be strings")
        return {k: copy_payload(v) for k, v in value.items()}
    raise ProtocolError(f"type {type(value).__name__} cannot cross a party boundary")


@runtime_checkable
class Channel(Protocol):
    """A link from the caller to one remote role object."""

    def call(self, method: str, /, **kwargs: Payload) -> Payload:
        """Invoke ``method`` on the remote role with keyword payloads; return its payload."""
        ...

    def close(self) -> None:
        """Release the link (idempotent)."""
        ...


class InProcessChannel:
    """A channel to a role object in this process: direct calls, payloads copied both ways."""

    def __init__(self, target: object) -> None:
        self._target = target
        self.calls = 0

    def call(self, method: str, /, **kwargs: Payload) -> Payload:
        fn = resolve_remote(self._target, method)
        self.calls += 1
        return copy_payload(fn(**copy_payload(kwargs)))

    def close(self) -> None:
        pass
