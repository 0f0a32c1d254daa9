"""A frame on the wire as a stream of bounded chunks, refused early on its declared length (ours).

gRPC receives a unary message in full before a handler sees a byte of it, so with one message per
frame, a peer could make a party buffer a frame of any size up to the gRPC limit before our header
check refused it. Instead, gRPC's own receive limit on a server is one chunk (:data:`CHUNK_BYTES`;
its C core refuses a larger message on the length prefix, before buffering it), and a request
frame larger than a chunk crosses the link as a gRPC stream of chunks. The receiver reads the
frame's header from the first chunk and refuses a frame whose declared length exceeds its limit
before it reads any further chunk; it also refuses more bytes than declared, and fewer
(truncation).

The declared length only bounds what is read (and sizes the buffer, once it passed the limit and,
on a server, was reserved in the byte budget). It is never trusted for anything else: the
assembled frame is checked in full (:func:`~p3eft.runtime.frame.unpack`) and, on an attested
session, authenticated before any state changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from p3eft.errors import ProtocolError
from p3eft.runtime.frame import HEADER_BYTES, declared_length

CHUNK_BYTES = 4 * 2**20  # ours: large enough that per-chunk overhead is negligible, small next to RAM


def split(raw: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The chunks of one frame, in order (a frame is never empty: it has a header)."""
    for at in range(0, len(raw), chunk_bytes):
        yield raw[at : at + chunk_bytes]


def assemble(
    chunks: Iterable[bytes],
    max_payload: int,
    on_chunk: Callable[[int], None] | None = None,
    on_header: Callable[[int], None] | None = None,
) -> bytes | bytearray:
    """Read one frame's chunks and join them, refusing early.

    Refused with a :class:`ProtocolError`, each before the next chunk is read: a frame whose header
    declares a payload over ``max_payload``, a malformed header, an empty chunk, and more bytes than
    the header declares. A stream that ends short of the declared length is a truncated frame.
    ``on_chunk(n)`` is told the size of every chunk taken (the server counts the bytes it buffered);
    ``on_header(total)`` the declared total length once the header is in, before any further chunk
    is read (the server reserves it in its byte budget, which may make it wait or refuse).
    """
    head: list[bytes] = []  # the chunks up to the end of the header (one, from our own senders)
    have = 0
    expected: int | None = None
    buf: bytearray | None = None
    for chunk in chunks:
        if on_chunk is not None:
            on_chunk(len(chunk))
        if not chunk:
            raise ProtocolError("empty chunk in a frame stream")
        if expected is not None and have + len(chunk) > expected:
            raise ProtocolError(f"frame stream carries more than the {expected} bytes its header declares")
        if expected is None:
            head.append(chunk)
            have += len(chunk)
            if have >= HEADER_BYTES:
                head = [b"".join(head)]
                expected = declared_length(head[0][:HEADER_BYTES], max_payload)
                if have > expected:
                    raise ProtocolError(
                        f"frame stream carries more than the {expected} bytes its header declares"
                    )
                if on_header is not None:
                    on_header(expected)
            continue
        if buf is None:
            # One buffer of the declared size, filled in place: no regrowth, and a large frame is one
            # allocation the C library maps and unmaps on its own (allocated only after the length
            # passed the limit and, on a server, was reserved in the byte budget).
            buf = bytearray(expected)
            buf[:have] = head[0]
            head.clear()
        buf[have : have + len(chunk)] = chunk
        have += len(chunk)
    if expected is None:
        raise ProtocolError(f"truncated frame: {have} bytes, the header alone needs {HEADER_BYTES}")
    if have < expected:
        raise ProtocolError(f"truncated frame: {have} bytes, header announces {expected}")
    return buf if buf is not None else head[0]
