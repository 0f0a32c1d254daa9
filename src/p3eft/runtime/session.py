"""Sessions: ids, sequence numbers, replay refusal and the attested session key (ours).

Every link runs inside a session that the server opens and names with 16 random bytes. Each request
carries the next sequence number; the server remembers the highest it has accepted and refuses any
number at or below it, so a recorded request cannot be replayed into the session. The response
echoes the session and the number, so a client cannot be fed an old answer either.

On sessions with an attested enclave, the client and the enclave agree on an AES-256-GCM key by
X25519 between a fresh client key and the enclave's *attested* key (HKDF-SHA256, salted with the
session id and the attestation nonce). Every payload after that is encrypted to that key; the
nonce is the direction and the sequence number (unique per key), and the frame header fields are
authenticated data. Secrets therefore reach only the key the quote vouched for, whatever
terminates TLS.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime.frame import SESSION_ID_BYTES, Kind

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
    """AES-GCM over payloads of one session; nonce = direction | sequence number."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def _nonce(direction: int, seq: int) -> bytes:
        return struct.pack("<IQ", direction, seq)

    @staticmethod
    def _aad(session: bytes, seq: int, kind: Kind, method: str) -> bytes:
        return session + struct.pack("<QB", seq, int(kind)) + method.encode("utf-8")

    def seal(self, direction: int, session: bytes, seq: int, kind: Kind, method: str, data: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(direction, seq), data, self._aad(session, seq, kind, method))

    def open(self, direction: int, session: bytes, seq: int, kind: Kind, method: str, data: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                self._nonce(direction, seq), data, self._aad(session, seq, kind, method)
            )
        except InvalidTag as err:
            raise SecurityError("encrypted payload failed authentication (wrong key or tampered)") from err


@dataclass
class ServerSession:
    """What a server remembers about one open session."""

    sid: bytes
    peer: str
    last_seq: int = 0
    attest_nonce: bytes | None = None
    cipher: SessionCipher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept_seq(self, seq: int) -> None:
        """Accept ``seq`` if it is newer than every number seen; refuse replays."""
        with self.lock:
            if seq <= self.last_seq:
                raise ProtocolError(f"replayed sequence number {seq} (last accepted {self.last_seq}) refused")
            self.last_seq = seq


class SessionTable:
    """Thread-safe map of open sessions, bounded so a client cannot exhaust memory."""

    def __init__(self, max_sessions: int = 256) -> None:
        self._sessions: dict[bytes, ServerSession] = {}
        self._lock = threading.Lock()
        self.max_sessions = max_sessions

    def open(self, peer: str) -> ServerSession:
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                oldest = next(iter(self._sessions))  # dicts keep insertion order
                del self._sessions[oldest]
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

    def close(self, sid: bytes) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)
