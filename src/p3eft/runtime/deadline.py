"""Receive deadlines: a call whose request stops arriving is cut, from the server side (ours).

The byte budget (:mod:`p3eft.runtime.budget`) and ``maximum_concurrent_rpcs`` bound what peers can
make a server hold, but not for how long. Without a deadline, an authenticated but hostile party
(one malicious data owner, say) could send the header chunk of a frame within the limit and then
stall with the stream open: the frame's budget reservation and its concurrency slot are held for
ever, and a few such streams make every other party's large calls wait and be refused as busy, or
hit the concurrency cap. A stream that never sends its first chunk holds a slot the same way.

So every call's request must keep arriving while the server reads it:

- **stall rule:** at most ``stall_s`` from the start of the call to its first chunk and between
  two chunks;
- **rate rule:** once a chunked frame's declared length is reserved, the rest of the frame must
  arrive within ``stall_s + declared / min_rate`` (a sender that trickles one small chunk just
  inside every stall window is still cut).

The clock is paused while the server itself makes the call wait (for room in the byte budget) and
stops once the request is complete: handling the frame is not the sender's time. A call past its
deadline is cancelled from the server side (:meth:`grpc.RpcContext.cancel`): the handler's request
iterator then fails, the handler gives back the reservation, and gRPC frees the slot once the
call ends. One thread per server watches every call in flight (a handful: at most
``maximum_concurrent_rpcs``), so a chunk costs a dictionary update, not a timer thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("p3eft.runtime.deadline")


class ReceiveWatchdog:
    """Cancels the calls whose deadline passed; one per server, started and stopped with it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, ReceiveDeadline]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.cut = 0  # calls cut so far (tests and operators read it; written under a call's lock)

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopped = False
                self._thread = threading.Thread(target=self._run, name="p3eft-receive-watchdog", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    @property
    def watching(self) -> int:
        """How many calls are being received now (armed deadlines)."""
        with self._cond:
            return len(self._due)

    def watch(
        self, cancel: Callable[[], None], stall_s: float, min_rate: float | None, what: str
    ) -> ReceiveDeadline:
        """A deadline for one call, armed now: its first chunk must come within ``stall_s``."""
        d = ReceiveDeadline(self, next(self._ids), cancel, stall_s, min_rate, what)
        d._arm(time.monotonic() + stall_s)
        return d

    def _set(self, key: int, at: float | None, d: ReceiveDeadline) -> None:
        with self._cond:
            if at is None:
                self._due.pop(key, None)
                return
            earlier = key not in self._due or at < self._due[key][0]
            self._due[key] = (at, d)
            if earlier:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                late = [k for k, (at, _) in self._due.items() if at <= now]
                expired = [self._due.pop(k)[1] for k in late]
                if not expired:
                    nxt = min((at for at, _ in self._due.values()), default=None)
                    self._cond.wait(None if nxt is None else nxt - now)
                    continue
            for d in expired:  # outside the lock: cancel() takes gRPC's own locks
                d._expire()


class ReceiveDeadline:
    """The receive deadline of one call: the server's handler tells it about each chunk, about
    waits the server imposes, and when the request is complete."""

    def __init__(
        self,
        dog: ReceiveWatchdog,
        key: int,
        cancel: Callable[[], None],
        stall_s: float,
        min_rate: float | None,
        what: str,
    ) -> None:
        self._dog, self._key, self._cancel = dog, key, cancel
        self.stall_s, self.min_rate, self.what = stall_s, min_rate, what
        self._whole: float | None = None  # the rate rule's deadline for the whole frame
        self._lock = threading.Lock()
        self._done = False
        self.expired: str | None = None  # why the call was cut, once it was
        self.received = 0

    def _arm(self, at: float) -> None:
        if self._whole is not None:
            at = min(at, self._whole)
        self._dog._set(self._key, at, self)

    def chunk(self, n: int) -> None:
        """A chunk of ``n`` bytes arrived: the next one is due within ``stall_s``."""
        self.received += n
        self._arm(time.monotonic() + self.stall_s)

    def pause(self) -> None:
        """The server makes the call wait (budget): the sender is not late meanwhile."""
        self._dog._set(self._key, None, self)

    def resume(self, declared: int) -> None:
        """The frame's ``declared`` bytes are reserved: the rest must come at ``min_rate`` or faster."""
        now = time.monotonic()
        if self.min_rate:
            # time allowed = grace + bytes / rate (ours): a whole frame at the minimum rate, plus one stall
            self._whole = now + self.stall_s + max(declared - self.received, 0) / self.min_rate
        self._arm(now + self.stall_s)

    def finish(self) -> None:
        """The request is complete (or refused): what the server does next is not the sender's time."""
        with self._lock:
            self._done = True
        self._dog._set(self._key, None, self)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            late = self._whole is not None and time.monotonic() >= self._whole
            self.expired = (
                f"slower than {self.min_rate:g} B/s" if late else f"no chunk for {self.stall_s:g} s"
            )
            self._dog.cut += 1  # before the cancel: whoever sees the call end sees it counted
        log.warning("cut %s: %s after %d bytes", self.what, self.expired, self.received)
        self._cancel()
