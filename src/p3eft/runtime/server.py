"""A generic gRPC server that serves any role object's ``@remote`` methods (ours).

gRPC carries one unary method, ``/p3eft.Party/Call``, whose request and response are our own
frames (:mod:`p3eft.runtime.frame`) passed as raw bytes -- no .proto file, no code generation. The
server checks each frame (header, checksum, size, session, sequence number, attestation), decodes
the keyword payload, checks it binds to the method's signature and calls the role under a lock
(role objects are single-threaded state machines). Every refusal is answered with an error frame
that says why; the server then goes on serving, which the bad-input tests check.

Control methods (names starting with ``_p3eft.``) open and close sessions and, on an enclave,
answer attestation requests and bind the session key; they never reach the role.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from p3eft.channel import resolve_remote
from p3eft.errors import P3eftError, ProtocolError, SecurityError
from p3eft.runtime import codec
from p3eft.runtime.attestation import Attestor
from p3eft.runtime.errors import error_payload
from p3eft.runtime.frame import NO_SESSION, Flag, Frame, Kind, unpack
from p3eft.runtime.pki import PartyIdentity
from p3eft.runtime.session import (
    REQUEST_DIRECTION,
    RESPONSE_DIRECTION,
    SessionCipher,
    SessionTable,
    derive_session_key,
    x25519_keypair,
)

log = logging.getLogger("p3eft.runtime.server")

SERVICE = "p3eft.Party"
METHOD = "Call"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
OPEN, ATTEST, BIND, CLOSE, PING = (
    "_p3eft.open",
    "_p3eft.attest",
    "_p3eft.bind",
    "_p3eft.close",
    "_p3eft.ping",
)
DEFAULT_MAX_MESSAGE = 256 * 2**20
FRAME_OVERHEAD = 4096  # header + method name + slack, above the payload limit


@dataclass(frozen=True)
class ServerConfig:
    """How a party server listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks a free port; :attr:`PartyServer.port` tells which
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    allowed_peers: frozenset[str] | None = None  # party names (certificate CNs); None: any CA-signed
    workers: int = 4


def grpc_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC message limits set just above our payload limit, so our own check speaks first."""
    n = min(max_message_bytes + FRAME_OVERHEAD, 2**31 - 1)
    return [("grpc.max_receive_message_length", n), ("grpc.max_send_message_length", n)]


class PartyServer:
    """Serve one role object over mutual TLS; optionally as an attested enclave."""

    def __init__(
        self,
        role: object,
        identity: PartyIdentity,
        config: ServerConfig | None = None,
        attestor: Attestor | None = None,
        resolver: Callable[[str, str], Callable[..., Any]] | None = None,
    ) -> None:
        self.role = role
        self.identity = identity
        self.config = config or ServerConfig()
        self.attestor = attestor
        # (method, peer) -> callable; the default serves the role's @remote methods to anyone
        # allowed on the link. Hosts plug in their own to add per-method access rules.
        self.resolver = resolver or (lambda method, peer: resolve_remote(self.role, method))
        self.sessions = SessionTable()
        self.limits = codec.CodecLimits(max_bytes=self.config.max_message_bytes)
        self._role_lock = threading.Lock()
        self._enclave_key, self._enclave_public = x25519_keypair() if attestor else (None, b"")
        self.stats = {"requests": 0, "refused": 0, "bytes_in": 0, "bytes_out": 0}
        self._server: grpc.Server | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and start serving; return the port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.workers),
            options=grpc_size_options(self.config.max_message_bytes),
        )
        handler = grpc.unary_unary_rpc_method_handler(self._rpc)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        creds = grpc.ssl_server_credentials(
            [(self.identity.key_pem, self.identity.cert_pem)],
            root_certificates=self.identity.ca_pem,
            require_client_auth=True,
        )
        port = server.add_secure_port(f"{self.config.host}:{self.config.port}", creds)
        if port == 0:
            raise P3eftError(f"cannot bind {self.config.host}:{self.config.port}")
        server.start()
        self._server, self.port = server, port
        log.info("%s serving on %s:%d", self.identity.name, self.config.host, port)
        return port

    def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    # -- request handling ------------------------------------------------------------------
    def _rpc(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = _peer_name(context)
        self.stats["bytes_in"] += len(request)
        out = self.handle(request, peer)
        self.stats["bytes_out"] += len(out)
        return out

    def handle(self, raw: bytes, peer: str) -> bytes:
        """Answer one raw frame from ``peer`` with a response or an error frame (never raises)."""
        self.stats["requests"] += 1
        sid, seq, method = NO_SESSION, 0, ""
        try:
            if self.config.allowed_peers is not None and peer not in self.config.allowed_peers:
                raise SecurityError(f"party {peer!r} may not call {self.identity.name}")
            frame = unpack(raw, self.config.max_message_bytes)
            sid, seq, method = frame.session, frame.seq, frame.method
            if frame.kind != Kind.REQUEST:
                raise ProtocolError(f"expected a request frame, got {frame.kind.name}")
            if method == OPEN:
                session = self.sessions.open(peer)
                info = {
                    "session": session.sid,
                    "party": self.identity.name,
                    "attested": self.attestor is not None,
                }
                return Frame(Kind.RESPONSE, session.sid, seq, method, codec.encode(info)).pack()
            session = self.sessions.get(frame.session, peer)
            session.accept_seq(frame.seq)
            payload = frame.payload
            if frame.flags & Flag.ENCRYPTED:
                if session.cipher is None:
                    raise ProtocolError("encrypted frame on a session without a bound key")
                payload = session.cipher.open(REQUEST_DIRECTION, sid, seq, Kind.REQUEST, method, payload)
            kwargs = codec.decode(payload, self.limits)
            if not isinstance(kwargs, dict):
                raise ProtocolError("request payload must be a dict of keyword arguments")
            result = self._dispatch(
                session, method, kwargs, encrypted=bool(frame.flags & Flag.ENCRYPTED), peer=peer
            )
            body = codec.encode(result, self.limits)
            flags = Flag.NONE
            if session.cipher is not None and method not in (ATTEST, BIND):
                body = session.cipher.seal(RESPONSE_DIRECTION, sid, seq, Kind.RESPONSE, method, body)
                flags = Flag.ENCRYPTED
            return Frame(Kind.RESPONSE, sid, seq, method, body, flags).pack()
        except Exception as err:  # every failure becomes an error frame; the server keeps serving
            self.stats["refused"] += 1
            if isinstance(err, P3eftError):
                log.warning("refused %s from %s: %s", method or "<frame>", peer, err)
            else:
                log.exception("internal error in %s from %s", method, peer)
            return Frame(Kind.ERROR, sid, seq, method, codec.encode(error_payload(err))).pack()

    def _dispatch(self, session: Any, method: str, kwargs: dict, encrypted: bool, peer: str) -> Any:
        if method == PING:
            return {"party": self.identity.name}
        if method == CLOSE:
            self.sessions.close(session.sid)
            return None
        if method == ATTEST:
            if self.attestor is None:
                raise ProtocolError(f"{self.identity.name} is not an enclave and cannot attest")
            nonce = kwargs.get("nonce")
            if not isinstance(nonce, bytes) or len(nonce) < 16:
                raise ProtocolError("attestation needs a nonce of at least 16 bytes")
            session.attest_nonce = nonce
            return self.attestor.evidence(nonce, self._enclave_public)
        if method == BIND:
            if self.attestor is None or session.attest_nonce is None:
                raise ProtocolError("bind needs a preceding attestation on this session")
            client_public = kwargs.get("public_key")
            if not isinstance(client_public, bytes) or len(client_public) != 32:
                raise ProtocolError("bind needs the client's 32-byte X25519 public key")
            key = derive_session_key(self._enclave_key, client_public, session.sid, session.attest_nonce)
            session.cipher = SessionCipher(key)
            return {"bound": True}
        if method.startswith("_p3eft."):
            raise ProtocolError(f"unknown control method {method!r}")
        if self.attestor is not None and not (encrypted and session.cipher is not None):
            raise SecurityError(
                f"{method!r} refused: the session is not attested; verify the enclave before sending secrets"
            )
        fn = self.resolver(method, peer)
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError as err:
            raise ProtocolError(f"bad arguments for {method!r}: {err}") from err
        with self._role_lock:
            return fn(**kwargs)


def _peer_name(context: grpc.ServicerContext) -> str:
    """The caller's party name: the common name of its verified client certificate."""
    auth = context.auth_context()
    names: Iterable[bytes] = auth.get("x509_common_name", [])
    for n in names:
        return n.decode("utf-8", "replace")
    return ""
