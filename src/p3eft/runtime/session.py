"""Sessions: ids, sequence numbers, replay refusal and the attested session key (ours).

Every link runs inside a session that the server opens and names with 16 random bytes. Each request
carries the next sequence number; the server remembers the highest it has accepted and refuses any
number at or below it, so a recorded request cannot be replayed into the session. The response
echoes the session and the number, so a client cannot be fed an old answer either.

On sessions with an attested enclave, the client and the enclave agree on an AES-256-GCM key by
X25519 between a fresh client key and the enclave's *attested* key (HKDF-SHA256, salted with the
session id and the attestation nonce). Every payload after that is encrypted to that key; the
nonce is the direction and the sequence number (unique per key), and the whole frame header is
authenticated data. Once a session is bound to its key, every frame on it -- control calls such as
close and ping included -- must carry that key's authentication, so another process holding the
same certificate cannot close, re-attest or re-bind it. Secrets therefore reach only the key the quote vouched for, whatever
terminates TLS.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime.frame import SESSION_ID_BYTES

REQUEST_DIRECTION = 0
RESPONSE_DIRECTION = 1


def new_session_id() -> bytes:
    """A fresh random session id (never all zeros, which means "no session")."""
    while True:
        sid = os.urandom(SESSION_ID_BYTES)
        if any(sid):
            return sid


def x25519_keypair() -> tuple[x25519.X25519PrivateKey, bytes]:
    """A fresh X25519 key pair and its raw 32-byte public key."""
    priv = x25519.X25519PrivateKey.generate()
    return priv, priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_session_key(
    own: x25519.X25519PrivateKey, peer_public: bytes, session: bytes, nonce: bytes
) -> bytes:
    """AES-256 key both ends derive from the X25519 shared secret (HKDF-SHA256)."""
    try:
        shared = own.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise SecurityError(f"bad X25519 public key: {err}") from err
    return HKDF(hashes.SHA256(), 32, salt=session + nonce, info=b"p3eft-session-key-v1").derive(shared)


class SessionCipher:
    """AES-GCM over payloads of one session; nonce = direction | sequence number.

    The authenticated data is the frame's whole header and method (:meth:`Frame.aad`), so nothing
    in a frame -- sequence number, flags, kind, lengths -- can change without failing here.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def _nonce(direction: int, seq: int) -> bytes:
        return struct.pack("<IQ", direction, seq)

    def seal(self, direction: int, seq: int, aad: bytes, data: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(direction, seq), data, aad)

    def open(self, direction: int, seq: int, aad: bytes, data: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(direction, seq), data, aad)
        except InvalidTag as err:
            raise SecurityError("encrypted frame failed authentication (wrong key or tampered)") from err


TAG_BYTES = 16  # AES-GCM tag: ciphertext length = plaintext length + 16
MAX_SEQ_STEP = 2**32  # ours: a sequence number may skip ahead at most this far


@dataclass
class ServerSession:
    """What a server remembers about one open session."""

    sid: bytes
    peer: str
    last_seq: int = 0
    attest_nonce: bytes | None = None
    cipher: SessionCipher | None = None
    tenant: str | None = None  # which of the server's role instances this session talks to
    attrs: dict = field(default_factory=dict)  # for the host serving the session (e.g. its job)
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept_seq(self, seq: int) -> None:
        """Accept ``seq`` if it is newer than every number seen (and not absurdly far ahead).

        Call it only once the frame is authenticated: a frame that fails its checks must leave the
        session as it was, or a forged number would lock the genuine client out.
        """
        with self.lock:
            if seq <= self.last_seq:
                raise ProtocolError(f"replayed sequence number {seq} (last accepted {self.last_seq}) refused")
            if seq > self.last_seq + MAX_SEQ_STEP:
                raise ProtocolError(f"sequence number {seq} jumps too far ahead of {self.last_seq}; refused")
            self.last_seq = seq
            self.last_used = time.monotonic()


class SessionTable:
    """Thread-safe map of open sessions with per-party quotas (ours).

    A full table never evicts a live session: a party over its quota first loses its own sessions
    that were idle for ``idle_s`` (a client that died without closing), then is refused. So no
    party can push another's session out by opening many of its own.
    """

    def __init__(self, max_sessions: int = 256, per_party: int = 32, idle_s: float = 900.0) -> None:
        self._sessions: dict[bytes, ServerSession] = {}
        self._lock = threading.Lock()
        self.max_sessions = max_sessions
        self.per_party = per_party
        self.idle_s = idle_s

    def open(self, peer: str) -> ServerSession:
        with self._lock:
            mine = [s for s in self._sessions.values() if s.peer == peer]
            if len(mine) >= self.per_party or len(self._sessions) >= self.max_sessions:
                now = time.monotonic()
                for s in mine:
                    if now - s.last_used > self.idle_s:
                        del self._sessions[s.sid]
                mine = [s for s in mine if s.sid in self._sessions]
            if len(mine) >= self.per_party:
                raise ProtocolError(
                    f"party {peer!r} already has {len(mine)} open sessions (its quota); close one first"
                )
            if len(self._sessions) >= self.max_sessions:
                raise ProtocolError(f"server is at its limit of {self.max_sessions} sessions; try later")
            s = ServerSession(new_session_id(), peer)
            self._sessions[s.sid] = s
            return s

    def get(self, sid: bytes, peer: str) -> ServerSession:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise ProtocolError(f"unknown session {sid.hex()[:8]}... (expired, or the server restarted)")
        if s.peer != peer:
            raise SecurityError(f"session {sid.hex()[:8]}... belongs to another party")
        return s

    def close(self, sid: bytes) -> ServerSession | None:
        with self._lock:
            return self._sessions.pop(sid, None)

    def sessions(self) -> list[ServerSession]:
        with self._lock:
            return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)
