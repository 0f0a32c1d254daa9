"""A bound on the bytes of frames a server buffers at once, across all calls (ours).

Refusing frames that declare more than the size limit bounds each frame, not their sum: six calls
each sending a frame just within a 256 MiB limit would still make a server hold 1.5 GiB. So a
server reserves each chunked frame's declared length in a shared :class:`ByteBudget` once its
header has arrived, before it reads the frame's body, and gives it back when the call is
answered. A frame that does not fit waits for earlier ones to finish -- gRPC's flow control then
stops its sender, so the waiting costs no memory -- and is refused as busy if it still does not fit
after ``wait_s``. A declared length is untrusted, but a lie costs its sender: a frame that sends
more bytes than it declared is refused (:func:`~p3eft.runtime.chunks.assemble`).
"""

from __future__ import annotations

import threading

from p3eft.errors import ProtocolError


class ByteBudget:
    """Bytes reserved by the frames being received now; never more than ``limit``."""

    def __init__(self, limit: int, wait_s: float) -> None:
        if limit <= 0:
            raise ProtocolError("a byte budget must be positive")
        self.limit = limit
        self.wait_s = wait_s
        self.used = 0
        self.peak = 0  # the most bytes ever reserved at once (tests and operators read it)
        self._cond = threading.Condition()

    def reserve(self, n: int) -> None:
        """Reserve ``n`` bytes, waiting up to ``wait_s`` for other frames to release theirs."""
        if n > self.limit:
            raise ProtocolError(f"a frame of {n} bytes exceeds this server's budget of {self.limit} bytes")
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + n <= self.limit, timeout=self.wait_s):
                raise ProtocolError(
                    f"busy: {self.used} bytes of frames are being received (budget {self.limit}); "
                    f"a frame of {n} bytes did not fit within {self.wait_s:g} s"
                )
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()
