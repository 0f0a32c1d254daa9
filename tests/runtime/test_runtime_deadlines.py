"""Receive deadlines (issue: slowloris by an authenticated party): a call whose request stops
arriving is cut from the server side, giving back its byte-budget reservation and its concurrency
slot, while a slow but steady sender is served.

Servers run in the test process on 127.0.0.1 with a tiny ``receive_stall_s`` (0.5 s); each test has
a negative control on a server whose deadline is far away, to show the hostile client really
holds what the deadline frees.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p3eft.channel import remote
from p3eft.errors import P3eftError, ProtocolError
from p3eft.runtime import codec
from p3eft.runtime.chunks import CHUNK_BYTES
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.frame import Frame, Kind, unpack
from p3eft.runtime.pki import init_keys, load_identity
from p3eft.runtime.server import FULL_METHOD, PartyServer, ServerConfig

MB = 2**20
LIMIT = 16 * MB  # payload limit and byte budget of the servers here
STALL_S = 0.5
PLEN_AT = struct.calcsize("<4sHBB16sQH")  # offset of the payload-length field in a frame header


class _Sink:
    @remote
    def take(self, data: bytes) -> int:
        return len(data)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deadline") / "keys"
    init_keys(d)
    return d


def _server(keys: Path, **config) -> PartyServer:
    base = {"allowed_peers": frozenset({"enclave"}), "max_message_bytes": LIMIT, "inflight_bytes": LIMIT}
    server = PartyServer(_Sink(), load_identity(keys / "cloud", "cloud"), ServerConfig(**{**base, **config}))
    server.start()
    return server


def _channel(keys: Path, server: PartyServer) -> NetworkChannel:
    return NetworkChannel(
        f"127.0.0.1:{server.port}",
        load_identity(keys / "enclave", "enclave"),
        "cloud",
        max_message_bytes=LIMIT,
    )


class _Stalled:
    """A hostile call in a thread of its own: it sends ``first`` (nothing if None) and then stalls
    with the call open until :meth:`release`; ``error`` and ``ended`` tell how and when it ended."""

    def __init__(self, send, first: bytes | None) -> None:
        self._go = threading.Event()
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.started = time.monotonic()

        def chunks() -> Iterator[bytes]:
            if first is not None:
                yield first
            self._go.wait(60)

        def run() -> None:
            try:
                send(chunks())
            except P3eftError as err:
                self.error = err
            self.ended = time.monotonic()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def release(self) -> None:
        self._go.set()
        self._thread.join(10)


def _header(ch: NetworkChannel, declared: int) -> bytes:
    """The first chunk of a request whose header declares a ``declared``-byte payload."""
    head = bytearray(Frame(Kind.REQUEST, ch.session_id, 10**6, "take", b"").pack())
    struct.pack_into("<Q", head, PLEN_AT, declared)
    return bytes(head) + bytes(MB - len(head))


def _until(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return cond()


def test_a_stream_that_stalls_after_its_header_loses_its_reservation(keys):
    """A stream that sent the header of a 12 MiB frame and stalls holds 12 MiB of a 16 MiB budget;
    it is cut within about ``receive_stall_s`` and an honest 12 MiB call then goes through at once.
    Negative control: with a far deadline the honest call waits for room and is refused as busy."""
    # negative control first: the stalled stream holds the budget
    server = _server(keys, receive_stall_s=600.0, inflight_wait_s=1.0)
    hostile, honest = _channel(keys, server), _channel(keys, server)
    stalled = _Stalled(hostile.send_chunks, _header(hostile, 12 * MB))
    try:
        assert _until(lambda: server.budget.used >= 12 * MB)
        with pytest.raises(ProtocolError, match="busy"):
            honest.call("take", data=bytes(12 * MB))
        assert server.budget.used >= 12 * MB and server.watchdog.cut == 0
    finally:
        stalled.release()
        hostile.close(), honest.close()
        server.stop(0)

    server = _server(keys, receive_stall_s=STALL_S, inflight_wait_s=10.0)
    hostile, honest = _channel(keys, server), _channel(keys, server)
    stalled = _Stalled(hostile.send_chunks, _header(hostile, 12 * MB))
    try:
        assert _until(lambda: server.budget.used >= 12 * MB)
        t0 = time.monotonic()
        assert honest.call("take", data=bytes(12 * MB)) == 12 * MB
        waited = time.monotonic() - t0
        assert waited < 5.0, waited  # ~STALL_S: far below the 10 s the budget would have made it wait
        assert stalled.wait(5) and isinstance(stalled.error, PartyUnavailableError)
        assert "CANCELLED" in str(stalled.error)
        assert server.watchdog.cut == 1 and _until(lambda: server.budget.used == 0)
    finally:
        stalled.release()
        hostile.close(), honest.close()
        server.stop(0)


def _stall_every_slot(hostile: NetworkChannel, slots: int) -> list[_Stalled]:
    """``slots`` calls that never send their first message: half on the chunk-stream method, half
    on the single-message method (a hostile client can stream on either)."""
    single = hostile._grpc.stream_unary(FULL_METHOD)
    return [
        _Stalled(hostile.send_chunks if i % 2 else lambda it: hostile._send(single, it), None)
        for i in range(slots)
    ]


def test_calls_that_never_send_a_chunk_free_their_slots(keys, call_when_free):
    """As many calls as ``max_concurrent_rpcs`` that never send a byte of their frame are cut, and
    honest calls are served afterwards. Negative control: with a far deadline they hold every slot
    and an honest call is refused as busy."""
    slots = 2
    server = _server(keys, receive_stall_s=600.0, max_concurrent_rpcs=slots, workers=slots + 2)
    hostile, honest = _channel(keys, server), _channel(keys, server)
    stalled = _stall_every_slot(hostile, slots)

    def refused_busy() -> bool:
        try:
            honest.call("take", data=b"x")
        except ProtocolError as err:
            return "busy" in str(err)
        return False

    try:
        assert _until(lambda: server.watchdog.watching == slots)  # both hold a slot, waiting for bytes
        assert refused_busy()
        assert server.watchdog.cut == 0
    finally:
        for s in stalled:
            s.release()
        hostile.close(), honest.close()
        server.stop(0)

    server = _server(keys, receive_stall_s=STALL_S, max_concurrent_rpcs=slots, workers=slots + 2)
    hostile, honest = _channel(keys, server), _channel(keys, server)
    stalled = _stall_every_slot(hostile, slots)
    try:
        for s in stalled:
            assert s.wait(5) and isinstance(s.error, PartyUnavailableError), s.error
            assert s.ended - s.started < 4.0  # cut after about STALL_S
        assert server.watchdog.cut == slots
        got: list[int] = []
        others = [_channel(keys, server) for _ in range(slots)]
        threads = [
            threading.Thread(
                target=lambda c=c: got.append(call_when_free(lambda: c.call("take", data=b"ok")))
            )
            for c in others
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == [2] * slots  # every slot free again
        for c in others:
            c.close()
    finally:
        for s in stalled:
            s.release()
        hostile.close(), honest.close()
        server.stop(0)


def _paced(ch: NetworkChannel, payload: int, chunk: int, gap_s: float) -> tuple[bytes, float]:
    """Send a valid ``take`` request of ``payload`` bytes as chunks of ``chunk`` bytes, one every
    ``gap_s``; the raw reply and how long the exchange took."""
    ch._seq += 1
    raw = Frame(Kind.REQUEST, ch.session_id, ch._seq, "take", codec.encode({"data": bytes(payload)})).pack()
    assert chunk <= CHUNK_BYTES

    def chunks() -> Iterator[bytes]:
        for at in range(0, len(raw), chunk):
            if at:
                time.sleep(gap_s)
            yield raw[at : at + chunk]

    t0 = time.monotonic()
    reply = ch.send_chunks(chunks())
    return reply, time.monotonic() - t0


def test_a_slow_but_steady_sender_is_served_and_a_trickle_is_cut(keys):
    """2 MiB in 128 KiB chunks every 0.07 s (about 1.7 MiB/s, 1.1 s in all: twice the stall
    allowance) against a minimum rate of 1 MiB/s is served: no false positive. Negative control for
    the rate rule: 32 KiB every 0.2 s (160 KiB/s; each gap within the stall allowance) is cut at
    its deadline, 0.5 s + 2 MiB / (1 MiB/s), long before it would end (13 s)."""
    server = _server(keys, receive_stall_s=STALL_S, receive_min_rate=float(MB))
    ch = _channel(keys, server)
    try:
        reply, took = _paced(ch, 2 * MB, 128 * 1024, 0.07)
        frame = unpack(reply, LIMIT)
        assert frame.kind == Kind.RESPONSE and codec.decode(frame.payload) == 2 * MB
        assert took > 2 * STALL_S  # longer than one stall allowance: a whole-call timeout would cut it
        assert server.watchdog.cut == 0

        t0 = time.monotonic()
        with pytest.raises(PartyUnavailableError, match="CANCELLED"):
            _paced(ch, 2 * MB, 32 * 1024, 0.2)
        cut_after = time.monotonic() - t0
        assert 2.0 < cut_after < 6.0, cut_after  # the rate deadline (2.5 s), not the stall rule
        assert server.watchdog.cut == 1
        assert _until(lambda: server.budget.used == 0)
        assert ch.call("take", data=b"ok") == 2  # the server goes on serving
    finally:
        ch.close()
        server.stop(0)


def test_deadline_settings_must_be_positive(keys):
    ident = load_identity(keys / "cloud", "cloud")
    for bad in ({"receive_stall_s": 0.0}, {"receive_min_rate": -1.0}):
        with pytest.raises(ProtocolError, match="must be positive"):
            PartyServer(_Sink(), ident, ServerConfig(**bad))
