"""Shared helpers for the live-server tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from p3eft.errors import ProtocolError


def _call_when_free(call: Callable[[], Any], seconds: float = 5.0) -> Any:
    """``call()``, retried while the server answers busy, for at most ``seconds``.

    gRPC frees a ``max_concurrent_rpcs`` slot when the handler's stream closes, which can come a
    moment after the client already holds its reply (or its error); a test that checks that a slot
    is free again must allow that moment, or it fails by chance on a loaded machine.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except ProtocolError as err:
            if "busy" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def call_when_free() -> Callable[..., Any]:
    return _call_when_free
