"""Channels that survive a restart of the party at the other end (ours).

Two pieces, one on each side of a restart:

* :class:`ReconnectingLink` -- the enclave's link to the cloud. A failed call marks the link broken
  and raises :class:`~p3eft.runtime.errors.PartyUnavailableError`; :meth:`ReconnectingLink.reconnect`
  waits for the cloud to come back. The enclave host then rebuilds the cloud from its sealed
  checkpoint.
* :class:`ResilientChannel` -- the data owner's link to the enclave. It numbers the *mutating* calls
  it makes (``train_step`` ...) and keeps them since the enclave's last checkpoint. When the enclave
  (or, behind it, the cloud) restarts and rolls back to that checkpoint, the channel reconnects,
  re-attests, asks the host how many mutating calls its state includes, replays the ones after that
  and re-issues the failed call. The driver above it never notices, and because replayed calls
  carry the very same payloads and the checkpoint restores every RNG, the run ends with exactly the
  adapter an uninterrupted run would have produced. The log lives with the data owner (it is its
  own data), and is pruned up to the last checkpoint.

Each channel works in its own *job* on the enclave, named by a random secret it sends (encrypted,
on the attested session) with ``runtime_open`` after every (re)connection: the call counter, the
cached result of the last call and the checkpoint it resumes from are that job's alone. The channel
also remembers the newest checkpoint the enclave reported; an enclave that comes back with older
state (a deleted or rolled-back checkpoint) is refused rather than silently resumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from p3eft.channel import Channel
from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime.errors import PartyUnavailableError, RemoteError, register_error

log = logging.getLogger("p3eft.runtime.resilient")

STATUS_METHOD = "runtime_status"
OPEN_METHOD = "runtime_open"
CLOSE_METHOD = "runtime_close"


@register_error
class RolledBackError(PartyUnavailableError):
    """The party restored its last checkpoint (its peer restarted); the caller must replay."""


class ReconnectingLink:
    """A channel whose underlying connection is replaced after the peer restarts."""

    def __init__(self, connect: Callable[[], Channel], name: str = "peer") -> None:
        self._connect = connect
        self._inner: Channel | None = None
        self.name = name
        self.reconnects = 0

    @property
    def inner(self) -> Channel | None:
        return self._inner

    def call(self, method: str, /, **kwargs: Any) -> Any:
        if self._inner is None:
            raise PartyUnavailableError(f"link to {self.name} is down")
        try:
            return self._inner.call(method, **kwargs)
        except (PartyUnavailableError, ProtocolError) as err:
            # A restarted peer no longer knows our session: treat it like a lost connection.
            if isinstance(err, ProtocolError) and "unknown session" not in str(err):
                raise
            self._drop()
            raise PartyUnavailableError(f"link to {self.name} lost: {err}") from err

    def _drop(self) -> None:
        if self._inner is not None:
            with contextlib.suppress(Exception):  # the peer is gone; closing is best effort
                self._inner.close()
        self._inner = None

    def reconnect(self, wait_s: float, poll_s: float = 0.25) -> None:
        """(Re)connect, retrying until ``wait_s`` has passed."""
        self._drop()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._inner = self._connect()
                self.reconnects += 1
                return
            except PartyUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_s)

    def close(self) -> None:
        self._drop()


class ResilientChannel:
    """A data owner's channel that replays its mutating calls after the enclave rolls back."""

    def __init__(
        self,
        connect: Callable[[], Channel],
        wait_s: float = 120.0,
        prune_every: int = 16,
        job: bytes | None = None,
    ) -> None:
        self._connect = connect
        self._job = job if job is not None else os.urandom(32)
        self.link = ReconnectingLink(self._connect_to_job, "enclave")
        self.wait_s = wait_s
        self.prune_every = prune_every
        self._log: list[tuple[int, str, dict[str, Any]]] = []  # (index, method, kwargs)
        self._done = 0  # mutating calls acknowledged by the enclave
        self._sealed = 0  # newest checkpoint (in calls) the enclave reported for this job
        self.recoveries = 0
        self.link.reconnect(wait_s=0.0)
        # Count and number our calls as the host does: it says which methods mutate its state and
        # how many such calls it has applied so far.
        status = self._status()
        self._done = int(status["calls"])
        self.replay_methods = frozenset(status.get("replay_methods", ()))

    def _connect_to_job(self) -> Channel:
        channel = self._connect()
        try:
            channel.call(OPEN_METHOD, job=self._job)
        except BaseException:
            with contextlib.suppress(Exception):
                channel.close()
            raise
        return channel

    @property
    def inner(self) -> Channel | None:
        return self.link.inner

    @property
    def attested(self) -> Any:
        """What the enclave's quote vouched for on the current connection (key, code, configuration)."""
        return getattr(self.link.inner, "attested", None)

    def call(self, method: str, /, **kwargs: Any) -> Any:
        mutating = method in self.replay_methods
        index = self._done + 1 if mutating else None
        if mutating:
            self._log.append((index, method, kwargs))
        while True:
            try:
                result = self.link.call(method, **kwargs)
                break
            except PartyUnavailableError as err:  # RolledBackError included
                log.warning("enclave link failed (%s); recovering", err)
                delivered, value = self._recover(index)
                if delivered:
                    result = value
                    break
        if mutating:
            self._done = index
            if index % self.prune_every == 0:
                self._prune()
        return result

    def _status(self) -> dict[str, Any]:
        status = self.link.call(STATUS_METHOD)
        if not isinstance(status, dict) or "calls" not in status:
            raise RemoteError("enclave host sent a malformed runtime status")
        applied = int(status["calls"])
        if applied < self._sealed:
            raise SecurityError(
                f"the enclave resumed this job at call {applied}, but it had sealed a checkpoint after "
                f"call {self._sealed}: its sealed state was deleted or rolled back; refusing to continue"
            )
        self._sealed = max(self._sealed, int(status.get("checkpoint_calls", 0)))
        return status

    def _prune(self) -> None:
        saved = int(self._status().get("checkpoint_calls", 0))
        self._log = [entry for entry in self._log if entry[0] > saved]

    def _recover(self, pending: int | None) -> tuple[bool, Any]:
        """Reconnect, replay what the enclave lost; True if the pending call is already applied."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if time.monotonic() > deadline:
                raise PartyUnavailableError(
                    f"gave up after {self.wait_s:.0f} s: the enclave (or the cloud behind it) did not come back"
                )
            self.link.reconnect(max(0.0, deadline - time.monotonic()))
            try:
                status = self._status()
                applied = int(status["calls"])
                if pending is not None and applied >= pending:
                    if int(status.get("last_index", -1)) != pending:
                        raise ProtocolError(
                            f"the enclave applied call {pending} but cannot return its result "
                            f"(it holds the result of call {status.get('last_index')})"
                        )
                    return True, status.get("last_result")
                first = self._log[0][0] if self._log else (pending or self._done + 1)
                if applied + 1 < first:
                    raise ProtocolError(
                        f"cannot resume: the enclave rolled back to call {applied}, "
                        "older than this driver's replay log"
                    )
                for idx, method, kwargs in self._log:
                    if applied < idx < (pending if pending is not None else self._done + 1):
                        self.link.call(method, **kwargs)
                self.recoveries += 1
                return False, None
            except PartyUnavailableError as err:
                log.warning("recovery interrupted (%s); retrying", err)

    def close(self, release: bool = True) -> None:
        """Close the link; ``release`` also ends the job on the enclave (its state is dropped)."""
        if release and self.link.inner is not None:
            with contextlib.suppress(Exception):
                self.link.call(CLOSE_METHOD)
        self.link.close()
