"""Versioned binary frames: the one message type that crosses a network link (ours).

A frame is a fixed header followed by the method name and the payload::

    magic "P3FT" | version u16 | kind u8 | flags u8 | session id 16 B | sequence u64
    | method length u16 | payload length u64 | CRC-32 u32 | method | payload

The header lets a server refuse a bad message before it decodes anything: a wrong magic or
version, a frame shorter or longer than its stated lengths, a checksum mismatch, an unknown
session or a sequence number it has already seen. The CRC covers the whole frame, header included
(version 2; version 1 left the sequence number out, so a flipped bit there went unnoticed). It
catches corruption and truncation; the integrity against an attacker comes from TLS and, on
attested enclave sessions, from AES-GCM whose authenticated data is the whole header and the
method (:func:`Frame.aad`): a frame is authenticated before any session state changes.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from p3eft.errors import ProtocolError

MAGIC = b"P3FT"
VERSION = 2
SESSION_ID_BYTES = 16
NO_SESSION = bytes(SESSION_ID_BYTES)

_HEADER = struct.Struct("<4sHBB16sQHQI")
_HEAD = struct.Struct("<4sHBB16sQHQ")  # the header without its CRC
HEADER_BYTES = _HEADER.size
MAX_METHOD_BYTES = 256


class Kind(enum.IntEnum):
    """What a frame is: a call, its result, or the error it raised."""

    REQUEST = 1
    RESPONSE = 2
    ERROR = 3


class Flag(enum.IntFlag):
    """Per-frame options."""

    NONE = 0
    ENCRYPTED = 1  # payload is AES-GCM under the attested session key


@dataclass(frozen=True)
class Frame:
    """One message on a link."""

    kind: Kind
    session: bytes
    seq: int
    method: str
    payload: bytes | memoryview
    flags: Flag = Flag.NONE

    def pack(self) -> bytes:
        """Serialise the frame with its header and checksum."""
        method = self.method.encode("utf-8")
        if len(method) > MAX_METHOD_BYTES:
            raise ProtocolError(f"method name longer than {MAX_METHOD_BYTES} bytes")
        if len(self.session) != SESSION_ID_BYTES:
            raise ProtocolError("session id must be 16 bytes")
        if not 0 <= self.seq < 2**64:
            raise ProtocolError("sequence number out of range")
        head = _head(self.kind, self.flags, self.session, self.seq, method, len(self.payload))
        crc = zlib.crc32(self.payload, zlib.crc32(method, zlib.crc32(head)))
        return b"".join((head, struct.pack("<I", crc), method, self.payload))

    def aad(self) -> bytes:
        """Authenticated data for AES-GCM: every header field but the CRC, and the method name."""
        return aad(self.kind, self.flags, self.session, self.seq, self.method, len(self.payload))


def _head(kind: int, flags: int, session: bytes, seq: int, method: bytes, payload_len: int) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, int(kind), int(flags), session, seq, len(method), payload_len)


def aad(kind: int, flags: int, session: bytes, seq: int, method: str, payload_len: int) -> bytes:
    """The header (CRC excluded) and method of a frame with a ``payload_len``-byte payload."""
    raw = method.encode("utf-8")
    return _head(kind, flags, session, seq, raw, payload_len) + raw


def declared_length(head: bytes, max_payload: int) -> int:
    """Check a frame's header alone and return the frame's total length it declares.

    Needs only the first :data:`HEADER_BYTES` bytes, so a receiver can refuse a frame that
    declares more than it accepts before reading its body. The declared length is untrusted: it
    serves to refuse early and to bound what is read, never more (the frame is still checked in
    full by :func:`unpack`, and authenticated on attested sessions).
    """
    if len(head) < HEADER_BYTES:
        raise ProtocolError(f"truncated frame: {len(head)} bytes, the header alone needs {HEADER_BYTES}")
    magic, version, kind, flags, _session, _seq, mlen, plen, _crc = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError("not a p3eft frame (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported frame version {version} (this side speaks {VERSION})")
    if kind not in Kind.__members__.values():
        raise ProtocolError(f"unknown frame kind {kind}")
    if flags & ~int(Flag.ENCRYPTED):
        raise ProtocolError(f"unknown frame flags {flags:#x}")
    if plen > max_payload:
        raise ProtocolError(f"payload of {plen} bytes exceeds the limit of {max_payload} bytes")
    if mlen > MAX_METHOD_BYTES:
        raise ProtocolError(f"method name longer than {MAX_METHOD_BYTES} bytes")
    return HEADER_BYTES + mlen + plen


def unpack(data: bytes | bytearray, max_payload: int, copy: bool = True) -> Frame:
    """Parse and check a frame; anything malformed is a :class:`ProtocolError` with the reason.

    With ``copy=False`` the payload is a read-only view into ``data`` rather than a copy: a server
    handling a large frame then holds it once, not twice."""
    expected = declared_length(data[:HEADER_BYTES], max_payload)
    _magic, _version, kind, flags, session, seq, mlen, _plen, crc = _HEADER.unpack_from(data)
    if len(data) < expected:
        raise ProtocolError(f"truncated frame: {len(data)} bytes, header announces {expected}")
    if len(data) > expected:
        raise ProtocolError(f"frame has {len(data) - expected} bytes beyond its announced length")
    body = memoryview(data)
    method_raw = body[HEADER_BYTES : HEADER_BYTES + mlen]
    payload = body[HEADER_BYTES + mlen :]
    if zlib.crc32(payload, zlib.crc32(method_raw, zlib.crc32(data[: _HEAD.size]))) != crc:
        raise ProtocolError("frame checksum mismatch (corrupted in transit)")
    try:
        method = str(method_raw, "utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("method name is not valid UTF-8") from err
    payload = bytes(payload) if copy else payload.toreadonly()
    return Frame(Kind(kind), bytes(session), seq, method, payload, Flag(flags))
