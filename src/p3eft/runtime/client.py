"""The network :class:`~p3eft.channel.Channel`: mutual TLS, sessions, attestation (ours).

A :class:`NetworkChannel` behaves like :class:`~p3eft.channel.InProcessChannel` -- call a
remote method by name with keyword payloads, get its payload back, bit-identical -- but the role
object lives in another process. It opens a session, numbers every request, checks that each
answer echoes that number, and, when given a :class:`~p3eft.runtime.attestation.Verifier`, refuses
to send anything before the enclave's quote checks out and then encrypts every payload to the
attested key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from p3eft.errors import P3eftError, ProtocolError, SecurityError
from p3eft.runtime import codec
from p3eft.runtime.attestation import NONCE_BYTES, Attested, Verifier
from p3eft.runtime.chunks import CHUNK_BYTES, split
from p3eft.runtime.errors import PartyUnavailableError, raise_remote
from p3eft.runtime.frame import NO_SESSION, Flag, Frame, Kind, aad, unpack
from p3eft.runtime.pki import PartyIdentity
from p3eft.runtime.server import (
    ATTEST,
    BIND,
    CLOSE,
    DEFAULT_MAX_MESSAGE,
    FULL_METHOD,
    FULL_STREAM_METHOD,
    OPEN,
    PING,
    answer_limit,
    grpc_size_options,
)
from p3eft.runtime.session import (
    REQUEST_DIRECTION,
    RESPONSE_DIRECTION,
    TAG_BYTES,
    SessionCipher,
    derive_session_key,
    x25519_keypair,
)


def parse_url(url: str) -> str:
    """``host:port`` from ``host:port`` or ``p3eft://host:port`` / ``grpcs://host:port``."""
    target = url.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise P3eftError(f"bad party address {url!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return target


@dataclass
class LinkStats:
    """Bytes and calls on one link, for the benchmark's bytes-per-link figures."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    per_method: dict[str, list[int]] = field(default_factory=dict)  # method -> [calls, sent, received]

    def add(self, method: str, sent: int, received: int) -> None:
        self.calls += 1
        self.bytes_sent += sent
        self.bytes_received += received
        row = self.per_method.setdefault(method, [0, 0, 0])
        row[0] += 1
        row[1] += sent
        row[2] += received


class NetworkChannel:
    """A channel to a role object served by :class:`~p3eft.runtime.server.PartyServer`."""

    def __init__(
        self,
        url: str,
        identity: PartyIdentity,
        server_party: str,
        verifier: Verifier | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        timeout_s: float | None = None,
        connect_timeout_s: float = 10.0,
        tenant: str | None = None,
        reset_tenants: bool = False,
    ) -> None:
        self.url = url
        self.server_party = server_party
        self.identity = identity
        self.limits = codec.CodecLimits(max_bytes=max_message_bytes)
        self.timeout_s = timeout_s
        self.stats = LinkStats()
        self._lock = threading.Lock()
        self._seq = 0
        self._cipher: SessionCipher | None = None
        self._session = NO_SESSION
        self.attested: Attested | None = None
        creds = grpc.ssl_channel_credentials(
            root_certificates=identity.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )
        options = [
            *grpc_size_options(answer_limit(max_message_bytes), CHUNK_BYTES),
            ("grpc.ssl_target_name_override", server_party),
            # A restarted party must be reachable at once: no subchannel (and its backoff state)
            # shared with the channel that saw it die, and short reconnect backoffs.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        self._grpc = grpc.secure_channel(parse_url(url), creds, options=options)
        self._stub = self._grpc.unary_unary(FULL_METHOD)
        self._stream = self._grpc.stream_unary(FULL_STREAM_METHOD)
        try:
            grpc.channel_ready_future(self._grpc).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError as err:
            self._grpc.close()
            raise PartyUnavailableError(
                f"cannot reach {server_party} at {url} within {connect_timeout_s:.0f} s "
                "(not running, wrong address, or TLS refused our certificate)"
            ) from err
        try:
            open_args: dict[str, Any] = {"tenant": tenant} if tenant is not None else {}
            if reset_tenants:
                open_args["reset"] = True
            info = self._exchange(OPEN, open_args)
            self._session = info["session"]
            self.server_attested = bool(info.get("attested"))
            if info.get("party") != server_party:
                raise SecurityError(
                    f"expected party {server_party!r}, {url} says it is {info.get('party')!r}"
                )
            if verifier is not None:
                self._attest(verifier)
        except BaseException:
            self._grpc.close()
            raise

    @property
    def session_id(self) -> bytes:
        return self._session

    def _attest(self, verifier: Verifier) -> None:
        """Verify the enclave's quote for a fresh nonce, then bind a session key to its attested key."""
        nonce = os.urandom(NONCE_BYTES)
        evidence = self._exchange(ATTEST, {"nonce": nonce})
        if not isinstance(evidence, dict):
            raise SecurityError("attestation failed: enclave sent no evidence")
        attested = verifier.verify(evidence, nonce)
        own, own_public = x25519_keypair()
        key = derive_session_key(own, attested.public_key, self._session, nonce)
        # the answer to bind comes back under the new key: proof that the enclave derived it too
        self._exchange(BIND, {"public_key": own_public}, answer_cipher=SessionCipher(key))
        self.attested = attested

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Invoke ``method`` remotely; payloads are encrypted once the session is attested."""
        return self._exchange(method, kwargs)

    def ping(self) -> dict:
        return self._exchange(PING, {})

    def _exchange(self, method: str, kwargs: dict, answer_cipher: SessionCipher | None = None) -> Any:
        with self._lock:
            self._seq += 1
            seq, sid = self._seq, self._session
            body = codec.encode(kwargs, self.limits)
            flags = Flag.NONE
            encrypt = self._cipher is not None
            if encrypt:
                assert self._cipher is not None
                flags = Flag.ENCRYPTED
                head = aad(Kind.REQUEST, flags, sid, seq, method, len(body) + TAG_BYTES)
                body = self._cipher.seal(REQUEST_DIRECTION, seq, head, body)
            raw = Frame(Kind.REQUEST, sid, seq, method, body, flags).pack()
            reply = self.send_raw(raw)
            self.stats.add(method, len(raw), len(reply))
            frame = unpack(reply, self.limits.max_bytes)
            if frame.kind == Kind.ERROR:
                raise_remote(codec.decode(frame.payload, self.limits), self.server_party)
            if frame.kind != Kind.RESPONSE or frame.seq != seq or frame.method != method:
                raise ProtocolError(
                    f"{self.server_party} answered out of order (sequence {frame.seq}, sent {seq})"
                )
            if method != OPEN and frame.session != sid:
                raise ProtocolError(f"{self.server_party} answered for another session")
            payload = frame.payload
            cipher = answer_cipher or self._cipher
            if cipher is not None:
                if not frame.flags & Flag.ENCRYPTED:
                    raise SecurityError(f"{self.server_party} answered an attested call in the clear")
                payload = cipher.open(RESPONSE_DIRECTION, seq, frame.aad(), payload)
            if answer_cipher is not None:
                self._cipher = answer_cipher
            return codec.decode(payload, self.limits)

    def send_raw(self, raw: bytes) -> bytes:
        """Send one already-built frame and return the raw reply (tests use it to send bad frames).
        A frame that fits in one chunk goes as one unary message, a larger one as a chunk stream."""
        if len(raw) <= CHUNK_BYTES:
            return self._send(self._stub, raw)
        return self.send_chunks(split(raw))

    def send_chunks(self, chunks: Iterator[bytes]) -> bytes:
        """Send a frame as the given chunk stream and return the raw reply (tests send hostile
        streams: a header declaring more than the server accepts, more or fewer bytes than declared)."""
        return self._send(self._stream, chunks)

    def _send(self, stub: Any, request: bytes | Iterator[bytes]) -> bytes:
        try:
            return stub(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            detail = err.details() if hasattr(err, "details") else str(err)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                what = (
                    "is busy (too many concurrent calls)"
                    if "oncurrent" in str(detail)
                    else ("refused an oversized message")
                )
                raise ProtocolError(f"{self.server_party} {what}: {detail}") from err
            raise PartyUnavailableError(
                f"link to {self.server_party} at {self.url} failed ({code.name if code else 'error'}): {detail}"
            ) from err

    def close(self) -> None:
        if self._grpc is None:
            return
        try:
            if self._session != NO_SESSION:
                self._exchange(CLOSE, {})
        except P3eftError:
            pass
        self._grpc.close()
        self._grpc = None  # type: ignore[assignment]

    def __enter__(self) -> NetworkChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
