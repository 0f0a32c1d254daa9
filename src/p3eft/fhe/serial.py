"""Byte forms of SEAL objects, wrapped in a checked header.

SEAL's own loader trusts its input more than a network peer deserves, so nothing reaches it before we
have checked a fixed header: magic, object kind, the context id it belongs to, level, scale, the exact
payload length and a SHA-256 checksum of metadata and payload. Truncated, corrupted or foreign bytes
therefore end as a :class:`~p3eft.errors.ProtocolError` or :class:`~p3eft.errors.SecurityError` with
one clear line, never as a crash inside C++.

Layout (little-endian)::

    magic "P3FHE" | version u8 | kind u8 | context_id 16B | level u16 | scale f64 |
    meta_len u32 | payload_len u64 | sha256(meta + payload)[:16] | meta (JSON) | payload (SEAL bytes)

The binding only saves to and loads from file paths, so the SEAL part goes through an anonymous
in-memory file (``os.memfd_create``, reached as ``/proc/self/fd/N``): it has no name in any
directory, lives only as long as the descriptor, and vanishes with the process even on SIGKILL, so
nothing is ever left behind. The secret key only ever takes this route; where anonymous files do not
exist (not Linux), public objects fall back to a private temporary file deleted at once, and the
secret key is refused (:class:`~p3eft.errors.SecurityError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from p3eft.errors import ProtocolError, SecurityError

MAGIC = b"P3FHE"
VERSION = 1
KINDS = {
    "ciphertext": 1,
    "public_key": 2,
    "relin_keys": 3,
    "galois_keys": 4,
    "secret_key": 5,
    "plaintext": 6,
}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_HEAD = struct.Struct("<5sBB16sHdIQ16s")
HEADER_BYTES = _HEAD.size
MAX_PAYLOAD = 1 << 34  # 16 GiB: anything larger is not one of ours


@dataclass(frozen=True)
class Envelope:
    """A parsed, checked header plus its metadata and SEAL payload."""

    kind: str
    context_id: bytes
    level: int
    scale: float
    meta: dict[str, Any]
    payload: bytes | memoryview  # a view into the unpacked bytes only with unpack(view=True)


def pack(
    kind: str, context_id: bytes, payload: bytes, level: int = 0, scale: float = 0.0, meta: dict | None = None
) -> bytes:
    """Wrap SEAL bytes in our header."""
    if len(context_id) != 16:
        raise ValueError("context id must be 16 bytes")
    meta_b = json.dumps(meta or {}, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(meta_b)
    h.update(payload)  # not meta_b + payload: that would copy a payload of gigabytes once more
    digest = h.digest()[:16]
    head = _HEAD.pack(
        MAGIC, VERSION, KINDS[kind], context_id, level, scale, len(meta_b), len(payload), digest
    )
    return head + meta_b + payload


def unpack(data: bytes, kind: str, context_id: bytes | None = None, view: bool = False) -> Envelope:
    """Check and parse ``data``; refuse wrong kind, foreign context, truncation or corruption.

    ``view=True`` gives the payload as a read-only ``memoryview`` into ``data`` instead of a copy (for
    key payloads of gigabytes that are loaded into SEAL and then dropped)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes for a {kind}, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise ProtocolError(f"{kind} bytes truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}")
    magic, version, kind_code, ctx_id, level, scale, meta_len, payload_len, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not a p3eft FHE object (bad magic {magic!r})")
    if version != VERSION:
        raise ProtocolError(f"unsupported FHE object version {version} (this build reads {VERSION})")
    if kind_code != KINDS[kind]:
        raise ProtocolError(f"expected a {kind}, got a {_KIND_NAMES.get(kind_code, f'kind {kind_code}')}")
    if payload_len > MAX_PAYLOAD or meta_len > 1 << 20:
        raise ProtocolError(f"{kind} header declares an implausible size")
    want = HEADER_BYTES + meta_len + payload_len
    if len(data) != want:
        raise ProtocolError(
            f"{kind} bytes truncated or padded: header declares {want} bytes, got {len(data)}"
        )
    body = memoryview(data)[HEADER_BYTES:]
    if hashlib.sha256(body).digest()[:16] != digest:
        raise ProtocolError(f"{kind} bytes corrupted: checksum mismatch")
    if context_id is not None and ctx_id != context_id:
        raise SecurityError(
            f"{kind} belongs to FHE context {ctx_id.hex()[:12]}, not to this context {context_id.hex()[:12]}"
        )
    try:
        meta = json.loads(bytes(body[:meta_len]) or b"{}")
    except ValueError as err:
        raise ProtocolError(f"{kind} metadata is not JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ProtocolError(f"{kind} metadata is JSON but not an object (got {type(meta).__name__})")
    payload = body[meta_len:]
    return Envelope(kind, ctx_id, level, scale, meta, payload if view else bytes(payload))


# --- SEAL objects <-> bytes through an anonymous in-memory file --------------------------------------


def _memfd_available() -> bool:
    if not hasattr(os, "memfd_create"):
        return False
    try:
        fd = os.memfd_create("p3eft-fhe-probe", os.MFD_CLOEXEC)
    except OSError:
        return False
    try:
        return os.path.exists(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


_MEMFD = _memfd_available()


@contextlib.contextmanager
def _scratch(secret: bool) -> Iterator[tuple[str, int]]:
    """(path, fd) of a scratch file for SEAL: anonymous in memory, or refused for a secret."""
    if _MEMFD:
        fd = os.memfd_create("p3eft-fhe", os.MFD_CLOEXEC)
        try:
            yield f"/proc/self/fd/{fd}", fd
        finally:
            os.close(fd)
        return
    if secret:
        raise SecurityError(
            "no anonymous in-memory files here (os.memfd_create): refusing to write a secret key"
        )
    fd, path = tempfile.mkstemp(prefix="p3eft-fhe-")  # mode 0600, removed before we return
    try:
        yield path, fd
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def seal_to_bytes(obj: Any, secret: bool = False) -> bytes:
    """Serialise a SEAL object (ciphertext, key, plaintext) with SEAL's own compressed format."""
    with _scratch(secret) as (path, fd):
        obj.save(path)
        return _read_all(fd)


def seal_from_bytes(obj: Any, seal_context: Any, payload: bytes, kind: str) -> Any:
    """Load checked payload bytes into an empty SEAL object; SEAL validates them against the context."""
    with _scratch(kind == "secret_key") as (path, fd):
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        try:
            obj.load(seal_context, path)
        except (ValueError, RuntimeError, TypeError) as err:
            raise ProtocolError(f"{kind} payload rejected by SEAL: {err}") from err
    return obj
