"""The model owner's per-data-owner session, and how it asks the data owner for help mid-computation.

A session owns everything that belongs to one data owner: that data owner's public
:class:`~p3eft.fhe.context.CkksContext`, the secret rotation and the encrypted model bound to it, a
refresher that reaches *that* data owner, and its cost counters. Sessions share only the plaintext
model; a ciphertext from another data owner's context is refused by the engine's context-id check.

Mid-computation help (ours): the encrypted model calls its refresher synchronously, but the data owner
is the client of the link, so the session runs each request in a worker thread whose refresher's
channel is a :class:`CallbackChannel`: a call parks the request as a :class:`~.protocol.Callback`
answer to the data owner's pending request and waits for the data owner's ``resume``. The worker's
CPU time is its own thread's CPU time, plus what the session's kernel pool processes (if any) spent
for it, so per-party accounting stays exact even in one process.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p3eft.errors import P3eftError, ProtocolError
from p3eft.fhe.context import CkksContext
from p3eft.fhe.parallel import KernelPool
from p3eft.fhe.roles import RemoteRefresher
from p3eft.privtuner.contract import EncryptedModel, SessionModelSpec
from p3eft.privtuner.protocol import Callback, Done

_ABORT = object()


class SessionClosedError(ProtocolError):
    """The session was closed while a computation waited for the data owner."""


class CallbackChannel:
    """A :class:`~p3eft.channel.Channel` from the session's worker thread back to its data owner.

    ``call`` hands a :class:`Callback` to the thread serving the data owner's request and blocks until
    the data owner's answer arrives through :meth:`deliver`.
    """

    def __init__(self) -> None:
        self._to_client: queue.Queue[Any] = queue.Queue()
        self._to_worker: queue.Queue[Any] = queue.Queue()
        self.calls = 0
        self.waiting = False  # the worker is parked on a callback, waiting for the data owner
        self.waiting_since = 0.0  # clock() when it parked
        self.clock: Callable[[], float] = time.monotonic

    def call(self, method: str, /, **kwargs: Any) -> Any:
        self.calls += 1
        self.waiting_since = self.clock()
        self.waiting = True
        self._to_client.put(Callback(method, kwargs))
        answer = self._to_worker.get()
        self.waiting = False
        if answer is _ABORT:
            raise SessionClosedError("session closed while waiting for the data owner")
        return answer

    def close(self) -> None:
        self._to_worker.put(_ABORT)

    # -- the serving side ---------------------------------------------------------------------------
    def next_message(self) -> Callback | Done | BaseException:
        return self._to_client.get()

    def post(self, message: Done | BaseException) -> None:
        self._to_client.put(message)

    def deliver(self, answer: Any) -> None:
        self._to_worker.put(answer)


@dataclass
class SessionCounters:
    """The model owner's own cost for one session (reported with every finished request)."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    refreshes: int = 0
    min_level: int | None = None


@dataclass
class ModelOwnerSession:
    """One data owner's state on the model owner: keys, encrypted model, pending request, counters."""

    token: str
    spec: SessionModelSpec
    refresh_bound: float
    refresh_lambda: int
    ctx: CkksContext | None = None
    model: EncryptedModel | None = None
    counters: SessionCounters = field(default_factory=SessionCounters)
    _channel: CallbackChannel = field(default_factory=CallbackChannel)
    _worker: threading.Thread | None = None
    _refresher: RemoteRefresher | None = None
    pool: KernelPool | None = None  # the session's kernel workers (model owner ``workers`` > 1)
    clock: Callable[[], float] = time.monotonic  # for the idle timeout (tests pass a fake one)
    last_activity: float = 0.0

    def __post_init__(self) -> None:
        self._channel.clock = self.clock
        self.touch()

    def touch(self) -> None:
        """Note that the data owner was heard from, or that an answer left for it."""
        self.last_activity = self.clock()

    def idle_seconds(self, now: float | None = None) -> float:
        """How long the session has waited for its data owner: 0 while the model owner computes for it
        (a long step is not idleness), else the time since the data owner was last heard from."""
        computing = self._worker is not None and self._worker.is_alive() and not self._channel.waiting
        if computing:
            return 0.0
        since = max(self.last_activity, self._channel.waiting_since)
        return (self.clock() if now is None else now) - since

    def require_no_keys(self) -> None:
        """Refuse a second set of keys (checked before the model owner starts anything for them)."""
        if self.ctx is not None:
            raise ProtocolError("this session already has its data owner's keys")

    def bind_keys(self, ctx: CkksContext, pool: KernelPool | None = None) -> None:
        self.require_no_keys()
        self._refresher = _CountingRefresher(ctx, self._channel, self.refresh_bound, self.refresh_lambda)
        self._refresher.counters = self.counters
        self.ctx = ctx
        self.pool = pool
        if pool is None:  # a backend written before pools (``serve --factory``) may not take one
            self.model = self.spec.bind(ctx, self._refresher)
        else:
            self.model = self.spec.bind(ctx, self._refresher, pool)

    def require_idle(self) -> None:
        """Refuse while a request of this session is still computing or waiting for its callback."""
        if self._worker is not None and self._worker.is_alive():
            raise ProtocolError("a request of this session is still pending: answer its callback first")

    def require_model(self) -> tuple[EncryptedModel, CkksContext]:
        """The session's encrypted model and its data owner's context (both exist once keys are up)."""
        if self.model is None or self.ctx is None:
            raise ProtocolError("upload the FHE public keys before sending ciphertexts")
        return self.model, self.ctx

    # -- running one request, with callbacks ----------------------------------------------------------
    def start(self, job: Callable[[], Any]) -> dict[str, Any]:
        """Run ``job`` in the session's worker; return the first callback or the result."""
        self.require_idle()

        def run() -> None:
            # the model owner's CPU: this thread's, plus what the session's kernel workers spent
            cpu0, wall0, pool0 = time.thread_time(), time.perf_counter(), self._pool_cpu()
            try:
                result = job()
            except BaseException as err:  # handed to the serving thread, which re-raises it
                self.counters.cpu_s += time.thread_time() - cpu0 + self._pool_cpu() - pool0
                self.counters.wall_s += time.perf_counter() - wall0
                self.touch()  # the idle clock starts when the answer leaves, not when the request came
                self._channel.post(err)
                return
            cpu = time.thread_time() - cpu0 + self._pool_cpu() - pool0
            wall = time.perf_counter() - wall0
            self.counters.cpu_s += cpu
            self.counters.wall_s += wall
            cost: dict[str, Any] = {"server_cpu_s": cpu, "server_wall_s": wall}
            if self.counters.min_level is not None:
                cost["min_level"] = self.counters.min_level
            stats = getattr(self.model, "stats", None)
            if callable(stats):  # where the model owner's time goes, cumulative over the session
                cost["breakdown"] = stats()
            self.touch()
            self._channel.post(Done(result, cost))

        self._worker = threading.Thread(target=run, daemon=True, name=f"privtuner-session-{self.token[:8]}")
        self._worker.start()
        return self._wait()

    def _pool_cpu(self) -> float:
        return 0.0 if self.pool is None else self.pool.worker_cpu_s

    def resume(self, answer: Any) -> dict[str, Any]:
        if self._worker is None or not self._worker.is_alive():
            raise ProtocolError("no request of this session is waiting for an answer")
        self._channel.deliver(answer)
        return self._wait()

    def _wait(self) -> dict[str, Any]:
        msg = self._channel.next_message()
        if isinstance(msg, BaseException):
            if isinstance(msg, P3eftError):
                raise msg
            raise RuntimeError(f"model owner failed in session {self.token[:8]}: {msg!r}") from msg
        return msg.to_payload()

    def close(self) -> None:
        self._channel.close()
        if self.pool is not None:  # not waiting: a session may be closed under the model owner's lock
            self.pool.close(wait=False)


class _CountingRefresher(RemoteRefresher):
    """The engine's :class:`RemoteRefresher`, also recording how low the session's ciphertexts got."""

    counters: SessionCounters | None = None

    def __call__(self, ct):  # type: ignore[no-untyped-def]
        if self.counters is not None:
            lvl = self.ctx.level(ct)
            self.counters.refreshes += 1
            low = self.counters.min_level
            self.counters.min_level = lvl if low is None else min(low, lvl)
        return super().__call__(ct)
