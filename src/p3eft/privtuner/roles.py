"""PrivTuner's two parties as role objects (ours).

* :class:`ModelOwner` holds the plaintext model and serves any number of data owners, one
  :class:`~p3eft.privtuner.session.ModelOwnerSession` each (own keys, own rotation, own encrypted
  adapter). It only ever receives public keys, ciphertexts and the control fields listed in
  :mod:`p3eft.privtuner.protocol`; it never decrypts (it has no secret key to decrypt with).
* :class:`DataOwner` holds the CKKS secret key and its labelled sentences. It encrypts its inputs,
  answers refreshes (the only decryptions it makes before its outputs are masked views), decrypts the
  logits it is entitled to, and returns dL/dlogits of its own loss *encrypted*, so its labels never
  leave it. At the end it may decrypt the adapter (export policy).

They talk only through a :class:`~p3eft.channel.Channel` with payload types, so the same objects run
in one process and over the runtime's gRPC + mutual TLS (:mod:`p3eft.privtuner.net`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from p3eft.channel import Channel, remote, resolve_remote
from p3eft.errors import P3eftError, ProtocolError, SecurityError
from p3eft.fhe import ops
from p3eft.fhe.context import Ciphertext, CkksContext, Layout, SecretKey, keygen
from p3eft.fhe.parallel import KernelPool
from p3eft.fhe.params import ParamSet
from p3eft.fhe.refresh import refresh_answer
from p3eft.privtuner import protocol as P
from p3eft.privtuner.accounting import AccountingChannel, Ledger
from p3eft.privtuner.audit import top_values
from p3eft.privtuner.contract import ClientCodec, EncryptedModel, ModelBackend
from p3eft.privtuner.session import ModelOwnerSession
from p3eft.runtime.sealing import Sealer

MAX_SESSIONS = 64
MAX_KEY_CHARS = 256  # an example key names an example for the frozen-layer cache
MAX_WORKERS = 32  # kernel-pool processes per session; each holds the session's public keys (~1 GB)
IDLE_TIMEOUT_S = 3600.0  # ours: a session whose data owner is silent this long is closed


class ModelOwner:
    """The model owner's role: one model, one session per data owner, nothing shared between sessions.

    A data owner that vanishes (crash, cut link, or on purpose) would otherwise hold its session, and
    the worker parked on its refresh callback, forever; ``max_sessions`` of them would lock every other
    data owner out. So a session whose data owner has been silent for ``idle_timeout_s`` (time spent
    computing for it does not count) is closed: lazily, when any request arrives (no reaper thread).

    ``end_policy`` (:class:`~p3eft.privtuner.protocol.EndPolicy`, announced to every data owner in its
    session setup) is enforced here: with ``encrypted`` the model owner answers no request for the
    adapter and seals its checkpoints under its own key, so the adapter never reaches the data owner
    in a form it can decrypt.
    """

    def __init__(
        self,
        backend: ModelBackend,
        max_sessions: int = MAX_SESSIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        state_key: bytes | None = None,
        end_policy: P.EndPolicy | str = P.EndPolicy.EXPORT,
        workers: int = 1,
    ) -> None:
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
            raise P3eftError(f"workers must be an integer from 1 to {MAX_WORKERS}, got {workers!r}")
        if state_key is not None and len(state_key) < 32:
            raise SecurityError("the model owner's state key must be at least 32 bytes")
        # signs the checkpoints it hands out; a random one per process unless the operator keeps one
        # (``serve privtuner-model-owner --state-key FILE``), so checkpoints outlive a restart
        self._state_key = state_key if state_key is not None else os.urandom(32)
        self.end_policy = P.EndPolicy(end_policy)
        # sealed checkpoints (policy ``encrypted``): AES-256-GCM under a key derived from the state key
        sealing_key = hmac.new(self._state_key, b"p3eft-privtuner-sealed-adapter-v1", hashlib.sha256).digest()
        self._sealer = Sealer(sealing_key)
        self.backend = backend
        # > 1: each session gets a pool of this many processes for its plaintext-weight products
        # (p3eft.fhe.parallel.KernelPool), started when its keys arrive and stopped with it
        self.workers = workers
        self.max_sessions = max_sessions
        self.idle_timeout_s = float(idle_timeout_s)
        self.clock = clock
        self.expired = 0  # sessions closed for idleness so far
        self._sessions: dict[str, ModelOwnerSession] = {}
        self._lock = threading.Lock()

    def _expire_idle(self) -> None:
        """Close every session idle longer than the timeout (call with the lock held)."""
        now = self.clock()
        for token in [t for t, s in self._sessions.items() if s.idle_seconds(now) > self.idle_timeout_s]:
            self._sessions.pop(token).close()
            self.expired += 1

    def _session(self, token: Any) -> ModelOwnerSession:
        with self._lock:
            self._expire_idle()
            s = self._sessions.get(token) if isinstance(token, str) else None
        if s is None:
            raise ProtocolError("unknown, closed or expired PrivTuner session")
        s.touch()
        return s

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @remote
    def pt_open_session(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new session with its own secret rotation; returns what the data owner needs to start."""
        options = dict(options or {})
        for k, v in options.items():
            if k not in P.OPEN_OPTIONS or not isinstance(v, P.OPEN_OPTIONS[k]):
                raise ProtocolError(f"session option {k!r} is not allowed")
        with self._lock:
            self._expire_idle()
            if len(self._sessions) >= self.max_sessions:
                raise ProtocolError(f"model owner serves at most {self.max_sessions} sessions at once")
            token = os.urandom(16).hex()
            spec = self.backend.open_session(options.get("seed"))
            self._sessions[token] = ModelOwnerSession(
                token, spec, self.backend.refresh_bound, self.backend.refresh_lambda, clock=self.clock
            )
        setup = P.SessionSetup(
            token,
            self.backend.params.to_json(),
            list(self.backend.galois_steps),
            self.backend.refresh_bound,
            self.backend.refresh_lambda,
            spec.public_setup(),
            self.end_policy,
        )
        return setup.to_payload()

    @remote
    def pt_upload_keys(self, session: str, keys: dict[str, bytes]) -> dict[str, Any]:
        s = self._session(session)
        s.require_no_keys()  # before parsing them or starting a pool: a repeated upload costs nothing
        ctx = CkksContext.from_payload(keys, keep_key_bytes=False)  # never forwarded: one copy of the keys
        if ctx.params != self.backend.params:
            raise SecurityError("the uploaded keys are for another parameter set than this session's")
        missing = [s for s in self.backend.rotation_steps if not ctx.can_rotate(s)]
        if missing:
            raise ProtocolError(
                f"the uploaded Galois keys lack {len(missing)} rotation steps the model needs"
            )
        pool = KernelPool(keys, self.workers) if self.workers > 1 else None
        try:
            s.bind_keys(ctx, pool)
        except BaseException:
            if pool is not None:
                pool.close()
            raise
        return {"context_id": ctx.context_id.hex()}

    @remote
    def pt_forward(
        self, session: str, inputs: list[bytes], key: str | None = None, train: bool = False
    ) -> Any:
        s = self._session(session)
        model, ctx = s.require_model()
        if key is not None and not (isinstance(key, str) and len(key) <= MAX_KEY_CHARS):
            raise ProtocolError(f"an example key is a string of at most {MAX_KEY_CHARS} characters")

        def job() -> bytes:  # parsed in the session's worker: its CPU time is the model owner's
            cts = _fresh_ciphertexts(ctx, inputs, "forward inputs")
            # re-randomised: the data owner decrypts these logits (p3eft.fhe.ops.rerandomise)
            return ctx.ciphertext_to_bytes(ops.rerandomise(ctx, model.forward(cts, key, train)))

        return s.start(job)

    @remote
    def pt_backward(self, session: str, dlogits: list[bytes]) -> Any:
        s = self._session(session)
        model, ctx = s.require_model()
        return s.start(lambda: model.backward(_fresh_ciphertexts(ctx, dlogits, "dL/dlogits")))

    @remote
    def pt_update(self, session: str, lr: float) -> Any:
        s = self._session(session)
        model, _ = s.require_model()
        if not (isinstance(lr, int | float) and math.isfinite(lr) and 0 < lr < 10):
            raise ProtocolError(f"learning rate {lr!r} outside (0, 10)")
        return s.start(lambda: model.apply_sgd(float(lr)))

    @remote
    def pt_resume(self, session: str, answer: bytes) -> Any:
        return self._session(session).resume(answer)

    @remote
    def pt_adapter(self, session: str) -> dict[str, list[bytes]]:
        """The encrypted adapter and head (ciphertexts under the data owner's own key); refused under
        the ``encrypted`` end policy."""
        s = self._session(session)
        if self.end_policy is P.EndPolicy.ENCRYPTED:
            raise SecurityError(
                "this model owner keeps the adapter encrypted (end policy 'encrypted'): it hands out no "
                "adapter ciphertexts; inference stays two-party"
            )
        return _adapter_bytes(*s.require_model(), rerandomise=True)

    # -- checkpoints (ours): the data owner keeps them, the model owner vouches for them ------------
    def _checkpoint_tag(self, ctx: CkksContext, adapter: dict[str, list[bytes]]) -> str:
        """HMAC-SHA256 under the model owner's state key over what a checkpoint is: these exact
        ciphertexts, for these keys (context id) and this model (backend fingerprint)."""
        mac = hmac.new(self._state_key, b"p3eft-privtuner-checkpoint-v1", hashlib.sha256)
        mac.update(self._binding(ctx))
        for name in sorted(adapter):
            raw = name.encode()
            mac.update(len(raw).to_bytes(8, "little") + raw + len(adapter[name]).to_bytes(8, "little"))
            for blob in adapter[name]:
                mac.update(hashlib.sha256(blob).digest())
        return mac.hexdigest()

    def _binding(self, ctx: CkksContext) -> bytes:
        """What a checkpoint belongs to, length-prefixed: the data owner's keys (context id) and this
        model (name, fingerprint). Both the tag and the sealed label cover it."""
        fingerprint = str(getattr(self.backend, "fingerprint", ""))
        parts = (ctx.context_id, self.backend.name.encode(), fingerprint.encode())
        return b"".join(len(part).to_bytes(8, "little") + part for part in parts)

    def _sealed_label(self, ctx: CkksContext) -> str:
        """What a sealed checkpoint is bound to (its AEAD label): these keys and this model."""
        return f"{P.SEALED_STATE_LABEL}:{hashlib.sha256(self._binding(ctx)).hexdigest()}"

    @remote
    def pt_checkpoint(self, session: str) -> dict[str, Any]:
        """The encrypted adapter and head between steps: with the model owner's tag (end policy
        ``export``), or sealed under the model owner's key (``encrypted``: the data owner cannot open
        it). The data owner stores it and may later :meth:`pt_restore` it into a new session under the
        same keys (after a crash of either party); tag and seal make sure that only a state this model
        owner produced for these keys and this model can be loaded, never one the data owner made up."""
        s = self._session(session)
        s.require_idle()
        model, ctx = s.require_model()
        if self.end_policy is P.EndPolicy.ENCRYPTED:  # the data owner keeps it, but cannot open it
            return {"sealed": self._sealer.seal(_adapter_bytes(model, ctx), self._sealed_label(ctx))}
        blobs = _adapter_bytes(model, ctx, rerandomise=True)  # ciphertexts the data owner can open
        return {"adapter": blobs, "tag": self._checkpoint_tag(ctx, blobs)}

    @remote
    def pt_restore(
        self,
        session: str,
        adapter: dict[str, list[bytes]] | None = None,
        tag: str | None = None,
        sealed: bytes | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint from :meth:`pt_checkpoint` into this session (keys uploaded first): an
        adapter and its tag, or (end policy ``encrypted``: the only form it loads) a sealed state."""
        s = self._session(session)
        s.require_idle()
        model, ctx = s.require_model()
        refused = (
            "checkpoint refused: not issued by this model owner for these keys and this model "
            "(altered, another data owner's, another model's, or a model owner with another state key)"
        )
        if sealed is not None:
            if adapter is not None or tag is not None or not isinstance(sealed, bytes):
                raise ProtocolError("a sealed checkpoint is one bytes field, without adapter or tag")
            if self.end_policy is not P.EndPolicy.ENCRYPTED:  # else pt_adapter would open it
                raise SecurityError(
                    "sealed checkpoints are loaded only by a model owner whose end policy is 'encrypted'"
                )
            try:
                adapter = self._sealer.unseal(sealed, self._sealed_label(ctx), "sealed checkpoint")
            except SecurityError as err:
                raise SecurityError(refused) from err
        elif self.end_policy is P.EndPolicy.ENCRYPTED:
            raise SecurityError("this model owner (end policy 'encrypted') loads sealed checkpoints only")
        elif not isinstance(adapter, dict) or not isinstance(tag, str):
            raise ProtocolError("a checkpoint is an adapter dict and its tag, or a sealed state")
        current = model.adapter_ciphertexts()
        if not isinstance(adapter, dict) or {
            k: len(v) if isinstance(v, list) else -1 for k, v in adapter.items()
        } != {k: len(v) for k, v in current.items()}:
            raise ProtocolError("the checkpoint's adapter does not have this model's parameters")
        if not all(isinstance(b, bytes) for v in adapter.values() for b in v):
            raise ProtocolError("a checkpoint's adapter holds ciphertexts only")
        if sealed is None and not hmac.compare_digest(self._checkpoint_tag(ctx, adapter), str(tag)):
            raise SecurityError(refused)
        model.load_adapter({k: [ctx.ciphertext_from_bytes(b) for b in v] for k, v in adapter.items()})
        return {"restored": sorted(adapter)}

    @remote
    def pt_close_session(self, session: str) -> None:
        with self._lock:
            s = self._sessions.pop(session, None) if isinstance(session, str) else None
        if s is not None:
            s.close()


def _adapter_bytes(
    model: EncryptedModel, ctx: CkksContext, rerandomise: bool = False
) -> dict[str, list[bytes]]:
    """The encrypted adapter and head as checked ciphertext bytes, by name; ``rerandomise`` for bytes
    the data owner will decrypt (:func:`p3eft.fhe.ops.rerandomise`)."""
    fresh = (lambda c: ops.rerandomise(ctx, c)) if rerandomise else (lambda c: c)
    return {
        name: [ctx.ciphertext_to_bytes(fresh(c)) for c in cts]
        for name, cts in model.adapter_ciphertexts().items()
    }


def _fresh_ciphertexts(ctx: CkksContext, blobs: Any, what: str) -> list[Ciphertext]:
    """Parse a data owner's ciphertexts, refusing any not at the top level: everything a data owner
    sends is a fresh encryption, and a lower one would fail deep inside the computation (where the
    model owner could only report an internal error) instead of here, with a one-line reason."""
    if not isinstance(blobs, list) or not all(isinstance(b, bytes) for b in blobs):
        raise ProtocolError(f"{what} must be a list of ciphertexts")
    cts = [ctx.ciphertext_from_bytes(b) for b in blobs]
    low = [lvl for lvl in map(ctx.level, cts) if lvl != ctx.top_level]
    if low:
        raise ProtocolError(
            f"{what}: fresh encryptions are at level {ctx.top_level}, got {len(low)} at level {min(low)}"
        )
    return cts


@dataclass
class Decryption:
    """One decryption the data owner made, for the transcript audit (kept in the data owner's process)."""

    purpose: str  # "refresh" (a masked view) or "logits" / "adapter" (entitled outputs)
    values: np.ndarray


@dataclass
class DataOwnerConfig:
    """The data owner's choices for its session."""

    lr: float = 1e-2
    seed: int | None = None
    label: str = "data-owner"
    record_decryptions: bool = False  # audit only: keeps what the data owner decrypted, in its process
    keep_views: bool = False  # with record_decryptions: whole slot vectors (else the largest values)
    # False: forget the serialised public keys once they are uploaded; key_material (and so a sealed
    # checkpoint) is refused then. For a data owner that never checkpoints (the bench): at PT32768 with
    # pow2 rotation keys the upload it would otherwise keep is 4.8 GB.
    keep_key_bytes: bool = True


class DataOwner:
    """The data owner's role: keys, inputs, refresh answers, its loss, and (by policy) the adapter."""

    def __init__(
        self,
        channel: Channel,
        codec_factory: Callable[[dict[str, Any]], ClientCodec],
        config: DataOwnerConfig | None = None,
        keys: tuple[CkksContext, SecretKey] | None = None,
    ) -> None:
        """Open a session and upload the public keys: fresh ones, or ``keys`` kept from an earlier
        session (:func:`p3eft.privtuner.checkpoint.load`), which a checkpoint's ciphertexts need."""
        self.config = config or DataOwnerConfig()
        self.ledger = Ledger()
        self.channel = AccountingChannel(channel, self.ledger)
        self.decryptions: list[Decryption] = []
        options = {"label": self.config.label}
        if self.config.seed is not None:
            options["seed"] = int(self.config.seed)
        self.setup = P.SessionSetup.from_payload(self.channel.call(P.OPEN, options=options))
        self.codec = codec_factory(self.setup.model)
        params = ParamSet.from_json(self.setup.params)
        if keys is None:
            with self.ledger.device_time():
                # the data owner never rotates: it makes its Galois keys for the upload only
                self.ctx, self._sk = keygen(params, self.setup.galois_steps, keep_galois_keys=False)
        else:
            self.ctx, self._sk = keys
            if self.ctx.params != params or self._sk.context_id != self.ctx.context_id:
                self.channel.call(P.CLOSE, session=self.setup.session)
                raise SecurityError(
                    f"the kept keys are for {self.ctx.params.name} (or do not belong together); "
                    f"this model owner uses {params.name}"
                )
        payload = self.ctx.to_payload()
        self.key_upload_bytes = sum(len(v) for v in payload.values())
        self.channel.call(P.KEYS, session=self.setup.session, keys=payload)
        del payload
        if not self.config.keep_key_bytes:
            self.ctx.drop_key_bytes()

    # -- what the model owner may ask for in a callback -------------------------------------------------
    @remote
    def fhe_refresh(self, ciphertext: bytes) -> bytes:
        """Decrypt the masked ciphertext to its integer polynomial (a view of p + r only) and encrypt
        that polynomial again at the top level (:func:`p3eft.fhe.refresh.refresh_answer`: the
        coefficient-domain refresh, no double rounding; a seeded answer, half a ciphertext)."""
        masked = self.ctx.ciphertext_from_bytes(ciphertext)
        answer, coeffs = refresh_answer(self.ctx, self._sk, masked, with_view=self.config.record_decryptions)
        if coeffs is not None:  # the view as float64 (exact to 53 bits: enough for the audit's tests)
            self._record("refresh", np.array([float(c) for c in coeffs]))
        self.ledger.decryptions += 1
        self.ledger.encryptions += 1
        return answer

    # -- helpers ---------------------------------------------------------------------------------------------
    def _record(self, purpose: str, values: np.ndarray) -> None:
        if self.config.record_decryptions:
            kept = values if self.config.keep_views else top_values(values)
            self.decryptions.append(Decryption(purpose, kept))

    def _answer(self, cb: P.Callback) -> bytes:
        self.ledger.refresh_round_trips += 1
        with self.ledger.device_time():
            out = resolve_remote(self, cb.method)(**cb.kwargs)
        if not isinstance(out, bytes):
            raise ProtocolError(f"{cb.method} must answer bytes")
        return out

    def _request(self, method: str, **kwargs: Any) -> Any:
        reply = self.channel.call(method, session=self.setup.session, **kwargs)
        done = P.drive(
            reply,
            self._answer,
            lambda ans: self.channel.call(P.RESUME, session=self.setup.session, answer=ans),
        )
        self.ledger.add_server_cost(done.cost)
        return done.result

    def _decrypt(self, data: bytes, purpose: str) -> tuple[np.ndarray, Layout]:
        ct: Ciphertext = self.ctx.ciphertext_from_bytes(data)
        values = self._sk.decrypt_slots(self.ctx, ct)
        self.ledger.decryptions += 1
        self._record(purpose, values)
        return values, ct.layout

    def _encrypt_inputs(self, text: str) -> list[bytes]:
        blocks = self.codec.encode(text)
        self.ledger.encryptions += len(blocks)
        return [self._sk.encrypt_seeded_bytes(self.ctx, slots, layout) for slots, layout in blocks]

    # -- the data owner's operations -------------------------------------------------------------------------
    def logits(self, text: str, key: str | None = None, train: bool = False) -> np.ndarray:
        """Encrypted forward pass of one sentence; the data owner decrypts the logits it is entitled to."""
        with self.ledger.device_time():
            inputs = self._encrypt_inputs(text)
        out = self._request(P.FORWARD, inputs=inputs, key=key, train=train)
        with self.ledger.device_time():
            values, layout = self._decrypt(out, "logits")
            self._last_logits_layout = layout
            return self.codec.logits(values, layout)

    def train_step(self, batch: list[tuple[str, int]], keys: list[str] | None = None) -> float:
        """One SGD step on a batch: per example forward, local loss, encrypted dL/dlogits back; update."""
        losses = []
        self.last_step_logits: list[np.ndarray] = []
        for i, (text, label) in enumerate(batch):
            z = self.logits(text, key=None if keys is None else keys[i], train=True)
            self.last_step_logits.append(z)
            with self.ledger.device_time():
                loss, grad = cross_entropy_grad(z, label)
                blocks = self.codec.dlogits_slots(grad / len(batch), self._last_logits_layout)
                dl = [self._sk.encrypt_seeded_bytes(self.ctx, s, lay) for s, lay in blocks]
                self.ledger.encryptions += len(dl)
            losses.append(loss)
            self._request(P.BACKWARD, dlogits=dl)
        self._request(P.UPDATE, lr=float(self.config.lr))
        return float(np.mean(losses))

    def decrypt_adapter(self) -> dict[str, np.ndarray]:
        """Export policy: fetch the encrypted adapter and head and decrypt them (peft-named tensors)."""
        if self.setup.end_policy is P.EndPolicy.ENCRYPTED:
            raise SecurityError(
                "this model owner keeps the adapter encrypted (end policy 'encrypted'): no export; "
                "evaluate two-party with the sealed checkpoint instead"
            )
        enc = self.channel.call(P.ADAPTER, session=self.setup.session)
        with self.ledger.device_time():
            dec = {name: [self._decrypt(b, "adapter") for b in blobs] for name, blobs in enc.items()}
            return self.codec.adapter(dec)

    def checkpoint(self) -> dict[str, Any]:
        """The model owner's copy of the encrypted adapter and head (call between steps); keep it with
        :meth:`key_material`. Under the ``export`` end policy: ciphertexts under this data owner's key
        and the model owner's tag; under ``encrypted``: one blob sealed by the model owner."""
        out = self.channel.call(P.CHECKPOINT, session=self.setup.session)
        if self.setup.end_policy is P.EndPolicy.ENCRYPTED:
            if not isinstance(out, dict) or set(out) != {"sealed"} or not isinstance(out["sealed"], bytes):
                raise ProtocolError("the model owner's checkpoint is not a sealed state")
            return {"sealed": out["sealed"]}
        if (
            not isinstance(out, dict)
            or not isinstance(out.get("adapter"), dict)
            or not isinstance(out.get("tag"), str)
        ):
            raise ProtocolError("the model owner's checkpoint is not an adapter and a tag")
        return {"adapter": out["adapter"], "tag": out["tag"]}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`checkpoint` into this session (opened with the same keys)."""
        fields = (
            {"sealed": state["sealed"]}
            if "sealed" in state
            else {"adapter": state["adapter"], "tag": state["tag"]}
        )
        self.channel.call(P.RESTORE, session=self.setup.session, **fields)

    def key_material(self) -> dict[str, Any]:
        """This data owner's keys as bytes, for its own sealed checkpoint only
        (:mod:`p3eft.privtuner.checkpoint` encrypts them before they touch a disk)."""
        if not self.config.keep_key_bytes:
            raise ProtocolError(
                "this data owner dropped its uploaded keys (keep_key_bytes=False), so it cannot write "
                "a checkpoint; open the session with keep_key_bytes=True to checkpoint"
            )
        return {"public": self.ctx.to_payload(), "secret_key": self._sk.to_bytes()}

    def close(self) -> None:
        try:
            self.channel.call(P.CLOSE, session=self.setup.session)
        finally:
            self.channel.close()


def cross_entropy_grad(logits: np.ndarray, label: int) -> tuple[float, np.ndarray]:
    """Cross-entropy of one example and its gradient softmax(z) - onehot(label) (the data owner's local loss)."""
    z = np.asarray(logits, dtype=np.float64)
    if not 0 <= label < z.size:
        raise ProtocolError(f"label {label} outside the {z.size} classes")
    shifted = z - z.max()
    p = np.exp(shifted) / np.exp(shifted).sum()
    loss = float(-np.log(max(p[label], 1e-300)))
    grad = p.copy()
    grad[label] -= 1.0
    return loss, grad
