"""A generic gRPC server that serves any role object's ``@remote`` methods (ours).

gRPC carries our own frames (:mod:`p3eft.runtime.frame`) as raw bytes -- no .proto file, no code
generation -- on two methods: ``/p3eft.Party/Call`` (unary) for a request frame that fits in one
chunk, and ``/p3eft.Party/Frames`` (client streaming) for a larger one, sent as a stream of bounded
chunks (:mod:`p3eft.runtime.chunks`). The server serves both as streams (the wire is the same
for a unary call), so every handler starts with its call and a receive deadline
(:mod:`p3eft.runtime.deadline`) cuts a call whose request stops arriving. gRPC's receive limit is
one chunk, so the server never buffers more than a chunk of a frame whose header declares more
than it accepts: gRPC refuses a larger message on its length prefix, and a stream is refused after
the chunk holding its header. Each answer is one unary message. The server checks each frame (header, checksum, size, session,
sequence number, attestation), decodes the keyword payload, checks it binds to the method's
signature and calls the role under a lock (role objects are single-threaded state machines). Every
refusal is answered with an error frame that says why; the server then goes on serving, which the
bad-input tests check.

Control methods (names starting with ``_p3eft.``) open and close sessions and, on an enclave,
answer attestation requests and bind the session key; they never reach the role. Once a session
is bound to its key, every frame on it must authenticate under that key *before* anything about
the session changes (sequence number included), control calls too.

A server can hold one role object, or one per *tenant* (``tenant_factory``): a client names its
tenant when it opens a session and gets a role instance of its own, so the enclave can keep each
data owner's state on the cloud apart (ours).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from p3eft.channel import resolve_remote
from p3eft.errors import P3eftError, ProtocolError, SecurityError
from p3eft.runtime import codec
from p3eft.runtime.attestation import Attestor
from p3eft.runtime.budget import ByteBudget
from p3eft.runtime.chunks import CHUNK_BYTES, assemble
from p3eft.runtime.deadline import ReceiveWatchdog
from p3eft.runtime.errors import error_payload
from p3eft.runtime.frame import NO_SESSION, Flag, Frame, Kind, aad, unpack
from p3eft.runtime.pki import PartyIdentity
from p3eft.runtime.session import (
    REQUEST_DIRECTION,
    RESPONSE_DIRECTION,
    TAG_BYTES,
    ServerSession,
    SessionCipher,
    SessionTable,
    derive_session_key,
    x25519_keypair,
)

log = logging.getLogger("p3eft.runtime.server")

SERVICE = "p3eft.Party"
METHOD, STREAM_METHOD = "Call", "Frames"
FULL_METHOD, FULL_STREAM_METHOD = f"/{SERVICE}/{METHOD}", f"/{SERVICE}/{STREAM_METHOD}"
OPEN, ATTEST, BIND, CLOSE, PING = (
    "_p3eft.open",
    "_p3eft.attest",
    "_p3eft.bind",
    "_p3eft.close",
    "_p3eft.ping",
)
DEFAULT_MAX_MESSAGE = 256 * 2**20  # ours: eval logits of a batch (vocab x tokens) can pass 64 MiB
TRIM_AFTER_BYTES = CHUNK_BYTES  # give freed buffers back to the OS once a call read this much
FRAME_OVERHEAD = 4096  # header + method name + slack, above the payload limit (answers)
RECEIVE_STALL_S = 30.0  # ours: a 4 MiB chunk within it needs ~140 KB/s; far above any network hiccup
RECEIVE_MIN_RATE = 2**20  # ours, bytes/s: a 256 MiB frame may take 256 s + the stall allowance


@dataclass(frozen=True)
class ServerConfig:
    """How a party server listens and what it accepts.

    What a peer can make the server buffer (ours): a frame declaring more than
    ``max_message_bytes`` is refused after the chunk holding its header; a frame of one chunk or
    less is at most one chunk, ``max_concurrent_rpcs`` at a time; larger frames reserve their
    declared length in a shared budget of ``inflight_bytes`` (default: twice the size limit; never
    below it, so any frame within the limit can be received), waiting up to ``inflight_wait_s``
    for room before they are refused as busy.

    How long a peer can hold any of that (ours; :mod:`p3eft.runtime.deadline`): a call's first
    chunk must arrive within ``receive_stall_s`` of the call's start, each further chunk within
    ``receive_stall_s`` of the previous one, and a chunked frame's remaining bytes within
    ``receive_stall_s + declared / receive_min_rate`` of its reservation (``None``: no rate rule);
    a call past its deadline is cancelled, releasing its reservation and its slot. Time spent
    waiting for room in the budget does not count.
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks a free port; :attr:`PartyServer.port` tells which
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    allowed_peers: frozenset[str] | None = None  # party names (certificate CNs); None: any CA-signed
    peer_filter: Callable[[str], bool] | None = None  # alternative to allowed_peers (name patterns)
    workers: int = 8
    max_concurrent_rpcs: int = 6
    inflight_bytes: int | None = None  # None: 2 x max_message_bytes
    inflight_wait_s: float = 60.0
    receive_stall_s: float = RECEIVE_STALL_S
    receive_min_rate: float | None = RECEIVE_MIN_RATE  # bytes per second
    mmap_threshold: int | None = None  # e.g. CHUNK_BYTES: see :func:`map_large_buffers`
    sessions_per_party: int = 32
    max_sessions: int = 256
    tenants_per_party: int = 8


@dataclass
class CallContext:
    """Who is calling, on which session: what a host's resolver needs for its access rules."""

    peer: str
    session: ServerSession


def grpc_size_options(receive: int, send: int) -> list[tuple[str, int]]:
    """gRPC's message limits. gRPC's C core refuses a message over its receive limit on the
    message's length prefix, before buffering it (measured: a 200 MiB message against a 4 MiB limit
    left the server's RSS within 2 MB of its baseline)."""
    cap = 2**31 - 1
    return [
        ("grpc.max_receive_message_length", min(receive, cap)),
        ("grpc.max_send_message_length", min(send, cap)),
    ]


def answer_limit(max_message_bytes: int) -> int:
    """The size of the largest answer frame, whose payload is at most ``max_message_bytes``."""
    return max_message_bytes + FRAME_OVERHEAD


@dataclass
class _Tenant:
    role: object
    lock: threading.Lock
    sessions: int = 0


class PartyServer:
    """Serve a role object (or one per tenant) over mutual TLS; optionally as an attested enclave.

    ``resolver(method, ctx)`` replaces the default dispatch (the role's @remote methods); a host that
    plugs one in does its own locking. ``attested_config`` is the configuration an attested enclave
    binds into every quote.
    """

    def __init__(
        self,
        role: object,
        identity: PartyIdentity,
        config: ServerConfig | None = None,
        attestor: Attestor | None = None,
        resolver: Callable[[str, CallContext], Callable[..., Any]] | None = None,
        tenant_factory: Callable[[], object] | None = None,
        attested_config: dict | None = None,
        on_close: Callable[[ServerSession], None] | None = None,
    ) -> None:
        self.role = role
        self.identity = identity
        self.config = config or ServerConfig()
        self.attestor = attestor
        self.attested_config = attested_config or {}
        self.resolver = resolver
        self.on_close = on_close
        self.tenant_factory = tenant_factory
        self._tenants: dict[tuple[str, str], _Tenant] = {}
        self._tenants_lock = threading.Lock()
        self.sessions = SessionTable(self.config.max_sessions, self.config.sessions_per_party)
        self.limits = codec.CodecLimits(max_bytes=self.config.max_message_bytes)
        self._role_lock = threading.Lock()
        self._enclave_key, self._enclave_public = x25519_keypair() if attestor else (None, b"")
        self.stats = {"requests": 0, "refused": 0, "bytes_in": 0, "bytes_out": 0}
        self._stats_lock = threading.Lock()
        c = self.config
        if not c.receive_stall_s > 0 or (c.receive_min_rate is not None and not c.receive_min_rate > 0):
            raise ProtocolError("receive_stall_s and receive_min_rate must be positive")
        self.watchdog = ReceiveWatchdog()
        self.budget = ByteBudget(
            max(c.inflight_bytes or 2 * c.max_message_bytes, c.max_message_bytes, 1), c.inflight_wait_s
        )
        self._server: grpc.Server | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and start serving; return the port."""
        if self.config.mmap_threshold is not None:
            map_large_buffers(self.config.mmap_threshold)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.workers),
            options=grpc_size_options(CHUNK_BYTES, answer_limit(self.config.max_message_bytes)),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        # Call is served as a stream too (the wire is the same for a unary call): the handler then
        # starts when the call does, so the receive deadline covers a message that never comes.
        handlers = {
            METHOD: grpc.stream_unary_rpc_method_handler(self._rpc),
            STREAM_METHOD: grpc.stream_unary_rpc_method_handler(self._rpc_stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        creds = grpc.ssl_server_credentials(
            [(self.identity.key_pem, self.identity.cert_pem)],
            root_certificates=self.identity.ca_pem,
            require_client_auth=True,
        )
        port = server.add_secure_port(f"{self.config.host}:{self.config.port}", creds)
        if port == 0:
            raise P3eftError(f"cannot bind {self.config.host}:{self.config.port}")
        self.watchdog.start()
        server.start()
        self._server, self.port = server, port
        log.info("%s serving on %s:%d", self.identity.name, self.config.host, port)
        return port

    def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        self.watchdog.stop()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    # -- request handling ------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _rpc(self, request: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """A frame that fits in one gRPC message (gRPC refused anything over a chunk already): the
        call's first message, whatever else a client might stream after it."""
        return self._serve(itertools.islice(request, 1), context, budgeted=False)

    def _rpc_stream(self, chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """A frame sent as a stream of chunks: refused after the chunk that holds its header if it
        declares more than the limit, and held in the byte budget while it is read and answered."""
        return self._serve(chunks, context, budgeted=True)

    def _serve(self, chunks: Iterator[bytes], context: grpc.ServicerContext, budgeted: bool) -> bytes:
        """Assemble one frame and answer it. ``stats["bytes_in"]`` counts every byte taken off the
        link: what the server buffered, refused frames included."""
        peer = _peer_name(context)
        read, reserved = 0, 0
        c = self.config
        deadline = self.watchdog.watch(
            context.cancel,
            c.receive_stall_s,
            c.receive_min_rate if budgeted else None,
            f"a {'frame stream' if budgeted else 'call'} from {peer}",
        )

        def took(n: int) -> None:
            nonlocal read
            read += n
            deadline.chunk(n)
            self._count("bytes_in", n)

        def reserve(n: int) -> None:
            nonlocal reserved
            deadline.pause()  # waiting for room is the server's doing, not the sender's
            self.budget.reserve(n)
            reserved = n
            deadline.resume(n)

        try:
            try:
                if not self._peer_allowed(peer):  # before reading a byte of the frame
                    raise SecurityError(f"party {peer!r} may not call {self.identity.name}")
                try:
                    raw = assemble(
                        chunks,
                        self.config.max_message_bytes,
                        on_chunk=took,
                        on_header=reserve if budgeted else None,
                    )
                finally:  # the request is in (or refused): handling it is not the sender's time
                    deadline.finish()
            except grpc.RpcError:  # the client went away mid-stream, or we cut it: nobody to answer
                if deadline.expired is None:  # a cut call was logged (and counted) by its deadline
                    log.info("%s dropped a frame stream after %d bytes", peer, read)
                return b""
            except P3eftError as err:
                self._count("requests")
                out = self._refusal(err, NO_SESSION, 0, "", peer)
            else:
                out = self.handle(raw, peer)
                del raw
        finally:
            deadline.finish()  # also when the peer was refused before its frame was read
            if reserved:
                self.budget.release(reserved)
        self._count("bytes_out", len(out))
        if read >= TRIM_AFTER_BYTES:  # glibc keeps freed heap pages otherwise
            _trim_heap()
        return out

    def _refusal(self, err: BaseException, sid: bytes, seq: int, method: str, peer: str) -> bytes:
        """The error frame answering a refused request (logged, never raised)."""
        self._count("refused")
        if isinstance(err, P3eftError):
            log.warning("refused %s from %s: %s", method or "<frame>", peer, err)
        else:
            log.exception("internal error in %s from %s", method, peer)
        return Frame(Kind.ERROR, sid, seq, method, codec.encode(error_payload(err))).pack()

    def _peer_allowed(self, peer: str) -> bool:
        c = self.config
        if c.peer_filter is not None:
            return c.peer_filter(peer)
        return c.allowed_peers is None or peer in c.allowed_peers

    def handle(self, raw: bytes | bytearray, peer: str) -> bytes:
        """Answer one raw frame from ``peer`` with a response or an error frame (never raises)."""
        self._count("requests")
        sid, seq, method = NO_SESSION, 0, ""
        try:
            if not self._peer_allowed(peer):
                raise SecurityError(f"party {peer!r} may not call {self.identity.name}")
            frame = unpack(raw, self.config.max_message_bytes, copy=False)
            sid, seq, method = frame.session, frame.seq, frame.method
            if frame.kind != Kind.REQUEST:
                raise ProtocolError(f"expected a request frame, got {frame.kind.name}")
            if method == OPEN:
                return self._open(frame, peer)
            session = self.sessions.get(frame.session, peer)
            payload = frame.payload
            encrypted = bool(frame.flags & Flag.ENCRYPTED)
            # authenticate first: nothing about the session changes for a frame that fails here
            if session.cipher is not None:
                if not encrypted:
                    raise SecurityError(
                        f"{method!r} refused: this session is bound to its key and the frame is not "
                        "authenticated with it"
                    )
                payload = session.cipher.open(REQUEST_DIRECTION, seq, frame.aad(), payload)
            elif encrypted:
                raise ProtocolError("encrypted frame on a session without a bound key")
            session.accept_seq(frame.seq)
            kwargs = codec.decode(payload, self.limits)
            if not isinstance(kwargs, dict):
                raise ProtocolError("request payload must be a dict of keyword arguments")
            result = self._dispatch(session, method, kwargs, peer=peer)
            body = codec.encode(result, self.limits)
            flags = Flag.NONE
            if session.cipher is not None:  # BIND's answer already under the new key: key confirmation
                flags = Flag.ENCRYPTED
                head = aad(Kind.RESPONSE, flags, sid, seq, method, len(body) + TAG_BYTES)
                body = session.cipher.seal(RESPONSE_DIRECTION, seq, head, body)
            return Frame(Kind.RESPONSE, sid, seq, method, body, flags).pack()
        except Exception as err:  # every failure becomes an error frame; the server keeps serving
            return self._refusal(err, sid, seq, method, peer)

    def _open(self, frame: Frame, peer: str) -> bytes:
        if frame.flags & Flag.ENCRYPTED:
            raise ProtocolError("open is never encrypted")
        kwargs = codec.decode(frame.payload, self.limits) if frame.payload else {}
        if not isinstance(kwargs, dict):
            raise ProtocolError("open payload must be a dict")
        tenant = kwargs.get("tenant")
        if kwargs.get("reset"):
            self._drop_tenants(peer)
        session = self.sessions.open(peer)
        if tenant is not None:
            try:
                self._attach_tenant(session, peer, tenant)
            except BaseException:
                self.sessions.close(session.sid)
                raise
        info = {"session": session.sid, "party": self.identity.name, "attested": self.attestor is not None}
        return Frame(Kind.RESPONSE, session.sid, frame.seq, OPEN, codec.encode(info)).pack()

    # -- tenants ---------------------------------------------------------------------------
    def _attach_tenant(self, session: ServerSession, peer: str, tenant: object) -> None:
        """A session naming a tenant gets a fresh role instance under that name (replacing any old
        one: the client opens a tenant only to (re)build its state from scratch)."""
        if self.tenant_factory is None:
            raise ProtocolError(f"{self.identity.name} does not serve tenants")
        if not isinstance(tenant, str) or not 0 < len(tenant) <= 128:
            raise ProtocolError("tenant must be a non-empty string of at most 128 characters")
        with self._tenants_lock:
            mine = sum(1 for p, _ in self._tenants if p == peer)
            if (peer, tenant) not in self._tenants and mine >= self.config.tenants_per_party:
                raise ProtocolError(f"party {peer!r} already has {mine} tenants (its quota)")
            self._tenants[(peer, tenant)] = _Tenant(self.tenant_factory(), threading.Lock(), 1)
        session.tenant = tenant

    def _release_tenant(self, session: ServerSession) -> None:
        if session.tenant is None:
            return
        with self._tenants_lock:
            t = self._tenants.get((session.peer, session.tenant))
            if t is not None:
                t.sessions -= 1
                if t.sessions <= 0:
                    del self._tenants[(session.peer, session.tenant)]

    def _drop_tenants(self, peer: str) -> None:
        with self._tenants_lock:
            for key in [k for k in self._tenants if k[0] == peer]:
                del self._tenants[key]

    def tenant_count(self) -> int:
        with self._tenants_lock:
            return len(self._tenants)

    def _role_of(self, session: ServerSession) -> tuple[object, threading.Lock]:
        if session.tenant is None:
            return self.role, self._role_lock
        with self._tenants_lock:
            t = self._tenants.get((session.peer, session.tenant))
        if t is None:
            raise ProtocolError(f"tenant {session.tenant!r} is gone (replaced by a newer session)")
        return t.role, t.lock

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch(self, session: ServerSession, method: str, kwargs: dict, peer: str) -> Any:
        if method == PING:
            return {"party": self.identity.name}
        if method == CLOSE:
            if self.sessions.close(session.sid) is not None:
                self._release_tenant(session)
                if self.on_close is not None:
                    self.on_close(session)
            return None
        if method == ATTEST:
            if self.attestor is None:
                raise ProtocolError(f"{self.identity.name} is not an enclave and cannot attest")
            if session.cipher is not None:
                raise SecurityError("this session is already attested and bound; open a new one")
            nonce = kwargs.get("nonce")
            if not isinstance(nonce, bytes) or len(nonce) < 16:
                raise ProtocolError("attestation needs a nonce of at least 16 bytes")
            session.attest_nonce = nonce
            return self.attestor.evidence(nonce, self._enclave_public, self.attested_config)
        if method == BIND:
            if self.attestor is None or session.attest_nonce is None:
                raise ProtocolError("bind needs a preceding attestation on this session")
            if session.cipher is not None:
                raise SecurityError("this session is already bound to a key")
            client_public = kwargs.get("public_key")
            if not isinstance(client_public, bytes) or len(client_public) != 32:
                raise ProtocolError("bind needs the client's 32-byte X25519 public key")
            key = derive_session_key(self._enclave_key, client_public, session.sid, session.attest_nonce)
            session.cipher = SessionCipher(key)
            return {"bound": True}
        if method.startswith("_p3eft."):
            raise ProtocolError(f"unknown control method {method!r}")
        if self.attestor is not None and session.cipher is None:
            raise SecurityError(
                f"{method!r} refused: the session is not attested; verify the enclave before sending secrets"
            )
        if self.resolver is not None:
            fn = self.resolver(method, CallContext(peer, session))
            _check_args(method, fn, kwargs)
            return fn(**kwargs)
        role, lock = self._role_of(session)
        fn = resolve_remote(role, method)
        _check_args(method, fn, kwargs)
        with lock:
            return fn(**kwargs)


def _check_args(method: str, fn: Callable[..., Any], kwargs: dict) -> None:
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        raise ProtocolError(f"bad arguments for {method!r}: {err}") from err


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def map_large_buffers(threshold: int) -> None:
    """Have the C library give every allocation of ``threshold`` bytes or more its own memory map,
    unmapped when it is freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; process-wide; ours).

    Why: glibc raises that threshold as large blocks are freed (up to 32 MiB), so frames and their
    decoded copies under 32 MiB land in the heap of the gRPC worker thread that handled them, and
    ``malloc_trim`` does not release the top of a thread's heap: six concurrent 15 MiB frames left
    85 MB resident in our measurement (a high-water mark per thread, reused by later calls, not a
    leak), 11 MB with a 4 MiB threshold. Not the default: every allocation over the threshold then
    costs a fresh map and its page faults, tensors included (an allocation-bound softmax over
    24 MiB took 53 -> 96 ms). A no-op where the C library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise, after large messages)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peer_name(context: grpc.ServicerContext) -> str:
    """The caller's party name: the common name of its verified client certificate."""
    auth = context.auth_context()
    names: Iterable[bytes] = auth.get("x509_common_name", [])
    for n in names:
        return n.decode("utf-8", "replace")
    return ""
