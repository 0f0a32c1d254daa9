"""CKKS contexts, keys and ciphertexts over TenSEAL's bundled SEAL binding (``tenseal.sealapi``).

Two objects, kept apart on purpose (the evaluator must never be able to decrypt):

* :class:`CkksContext` -- public: parameters, encoder, evaluator, public key, relinearisation key and
  only the Galois keys the kernels need. The model owner holds this and nothing else.
* :class:`SecretKey` -- the data owner's decryption key. It never enters a :class:`CkksContext`.

A context has an id: SHA-256 over the parameter set, the public key, the relinearisation key, the
Galois keys and their rotation steps, as serialised. Every ciphertext carries the id of the context
that made it, every operation and loader refuses one from another context, and a context rebuilt from
bytes recomputes the id from every key it received, so neither a ciphertext under a different key nor
an evaluation key swapped in from another key pair can be mixed in silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import galois, serial
from p3eft.fhe.params import ParamSet


class LevelError(ValueError):
    """An operation needs more multiplicative levels than the ciphertext has left."""


KEY_KINDS = ("public_key", "relin_keys", "galois_keys")  # the public keys a context payload carries
LAYOUT_FORMS = ("plain", "rows", "rows_cyc", "rows_rep", "replicated", "staggered")


@dataclass
class Layout:
    """How logical rows of values sit in the slots: row r occupies ``slots[r*block : r*block+length]``.

    ``form`` says what fills the rest: ``"plain"`` (zeros), ``"replicated"`` (each row's block repeats
    with period ``block`` through all slots) or ``"staggered"`` (copy c of the row, at offset c*block,
    is rotated by c*shift; what the diagonal kernels take as input).
    """

    length: int
    rows: int = 1
    block: int = 0
    form: str = "plain"
    shift: int = 0

    def __post_init__(self) -> None:
        if self.block == 0:
            self.block = self.length

    def to_dict(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "rows": self.rows,
            "block": self.block,
            "form": self.form,
            "shift": self.shift,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        try:
            return cls(
                int(d["length"]), int(d["rows"]), int(d["block"]), str(d["form"]), int(d.get("shift", 0))
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"malformed ciphertext layout: {err}") from err


@dataclass
class Ciphertext:
    """A SEAL ciphertext tagged with its context id and slot layout."""

    seal: Any
    context_id: bytes
    layout: Layout


def chain_by_level(seal_context: Any) -> list[Any]:
    """SEAL's context data along the modulus chain, indexed by level (0 = one prime left): SEAL
    links them from the top (first_context_data) downwards, and our code speaks in levels."""
    out = []
    data = seal_context.first_context_data()
    while data is not None:
        out.append(data)
        data = data.next_context_data()
    return out[::-1]


@dataclass
class CkksContext:
    """Public CKKS state: everything an evaluator may hold (no secret key)."""

    params: ParamSet
    seal: Any
    encoder: Any
    evaluator: Any
    public_key: Any
    relin_keys: Any
    # step (1..slots-1) -> the SEAL GaloisKeys object that holds that step's key. keygen makes one
    # object per step (so no step ever needs the whole key set in one buffer: see keygen); a payload
    # in the one-object form maps every step to the same object. Empty after release_galois_keys().
    galois_keys: dict[int, Any]
    galois_steps: tuple[int, ...]
    context_id: bytes
    _encryptor: Any = None
    _parms_ids: list[list[int]] = field(default_factory=list)
    # each public key's checked envelope (what key_bytes returns), kept so that to_payload never
    # serialises or copies gigabytes of Galois keys again
    _key_envelopes: dict[str, bytes] = field(default_factory=dict, repr=False)
    _key_bytes_dropped: bool = field(default=False, repr=False)
    # public helper objects derived from the parameters alone, built on first use by the modules that
    # need them (e.g. rawpoly's (0, 1) carriers per level); never key material
    helper_cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    # ----- construction -----------------------------------------------------------------------
    @staticmethod
    def seal_context(params: ParamSet) -> Any:
        params.check_secure()
        p = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        p.set_poly_modulus_degree(params.poly_modulus_degree)
        try:
            p.set_coeff_modulus(
                sealapi.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
            )
            ctx = sealapi.SEALContext(p, True, sealapi.SEC_LEVEL_TYPE.TC128)
        except (ValueError, RuntimeError) as err:
            raise SecurityError(f"SEAL cannot build parameter set {params.name}: {err}") from err
        if not ctx.parameters_set():
            raise SecurityError(f"SEAL refused parameter set {params.name}: {ctx.parameters_error_message()}")
        return ctx

    @staticmethod
    def compute_id(
        params: ParamSet,
        public_key_bytes: bytes,
        relin_keys_bytes: bytes = b"",
        galois_keys_bytes: bytes = b"",
        galois_steps: Iterable[int] = (),
    ) -> bytes:
        """16 bytes of SHA-256 over the parameter set and every public key (each length-prefixed)."""
        h = hashlib.sha256()
        steps = json.dumps(sorted(int(s) for s in galois_steps)).encode()
        for part in (params.to_json().encode(), public_key_bytes, relin_keys_bytes, galois_keys_bytes, steps):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.digest()[:16]

    def __post_init__(self) -> None:
        self._parms_ids = [data.parms_id() for data in chain_by_level(self.seal)]
        self._encryptor = sealapi.Encryptor(self.seal, self.public_key)

    @classmethod
    def from_payload(cls, payload: dict[str, bytes], keep_key_bytes: bool = True) -> CkksContext:
        """Rebuild the evaluator's context from :meth:`to_payload` bytes (what the data owner sends).

        The context id is recomputed from every key received; each envelope must declare that id, so
        a relinearisation or Galois key from another key pair is refused (:class:`SecurityError`).

        ``keep_key_bytes=False`` drops the received key bytes once SEAL has loaded them: an evaluator
        that never forwards the keys (PrivTuner's model owner) then holds one copy of its sessions'
        keys instead of two (the upload's size less per session: 0.6 to 1.2 GB for PrivTuner's shapes at
        N=16384), and :meth:`key_bytes` refuses."""
        if not isinstance(payload, dict):
            raise ProtocolError(f"FHE key payload must be a dict of bytes, got {type(payload).__name__}")
        try:
            params = ParamSet.from_json(payload["params"])
            # views into the received bytes, not copies: the Galois keys are gigabytes at N = 32768
            envs = {k: serial.unpack(payload[k], k, view=True) for k in KEY_KINDS}
        except KeyError as err:
            raise ProtocolError(f"FHE key payload lacks {err}") from err
        steps = _checked_steps(envs["galois_keys"].meta.get("steps", []), params.slots)
        sizes = _checked_sizes(envs["galois_keys"].meta.get("sizes"), steps, len(envs["galois_keys"].payload))
        cid = cls.compute_id(
            params,
            envs["public_key"].payload,
            envs["relin_keys"].payload,
            envs["galois_keys"].payload,
            steps,
        )
        for kind, env in envs.items():
            if env.context_id != cid:
                raise SecurityError(f"{kind} does not belong with the other keys (context id mismatch)")
        seal_ctx = cls.seal_context(params)
        pk = serial.seal_from_bytes(sealapi.PublicKey(), seal_ctx, envs["public_key"].payload, "public_key")
        rk = serial.seal_from_bytes(sealapi.RelinKeys(), seal_ctx, envs["relin_keys"].payload, "relin_keys")
        gk = _load_galois_keys(seal_ctx, envs["galois_keys"].payload, steps, sizes)
        ctx = cls(
            params,
            seal_ctx,
            sealapi.CKKSEncoder(seal_ctx),
            sealapi.Evaluator(seal_ctx),
            pk,
            rk,
            gk,
            steps,
            cid,
        )
        if keep_key_bytes:  # the envelopes as received: they passed every check above
            ctx._key_envelopes = {k: bytes(payload[k]) for k in KEY_KINDS}
        else:
            ctx.drop_key_bytes()
        return ctx

    def to_payload(self) -> dict[str, bytes]:
        """The public keys as separate checked byte strings, ready for a ``Channel`` call."""
        return {
            "params": self.params.to_json().encode(),
            "public_key": self.key_bytes("public_key"),
            "relin_keys": self.key_bytes("relin_keys"),
            "galois_keys": self.key_bytes("galois_keys"),
        }

    def key_bytes(self, which: str) -> bytes:
        """One public key in its checked envelope: the exact SEAL bytes the context id was computed over."""
        if which not in KEY_KINDS:
            raise ProtocolError(f"no public key called {which!r}")
        if self._key_bytes_dropped:
            raise ProtocolError(
                "this context's key bytes were dropped (loaded with keep_key_bytes=False, or "
                "drop_key_bytes() after an upload), so it cannot send the keys again"
            )
        if which not in self._key_envelopes:  # a context assembled by hand: serialise on first use
            if which == "galois_keys":
                raw, meta = _galois_key_bytes(self.galois_keys, self.galois_steps)
            else:
                raw, meta = serial.seal_to_bytes(getattr(self, which)), {}
            self._key_envelopes[which] = serial.pack(which, self.context_id, raw, meta=meta)
        return self._key_envelopes[which]

    # ----- levels ---------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def top_level(self) -> int:
        return len(self._parms_ids) - 1

    def can_rotate(self, step: int) -> bool:
        """Whether this context's Galois keys allow a rotation by ``step`` (by its own key, or composed
        from the keys of its NAF digits: :mod:`p3eft.fhe.galois`)."""
        return galois.can_rotate(step, self.galois_keys.keys(), self.slots)

    def drop_key_bytes(self) -> None:
        """Forget the serialised keys; :meth:`key_bytes` and :meth:`to_payload` refuse from then on.

        Why: a key holder that has uploaded its keys and will never send them again (no checkpoint,
        no second model owner) need not hold the upload: at N = 32768 the Galois keys alone are
        gigabytes (4.8 GB for PrivTuner's ``pow2`` set). The SEAL key objects it holds stay usable."""
        self._key_envelopes = {}
        self._key_bytes_dropped = True

    def release_galois_keys(self) -> None:
        """Drop SEAL's Galois key objects, keeping their serialised bytes (so :meth:`to_payload` still works).

        Why: the party that made the keys (a data owner) never rotates; it only encrypts, decrypts and
        re-encrypts. At N = 32768 the objects are gigabytes it would otherwise hold for the whole session.
        A rotation afterwards is refused like a missing key."""
        self.key_bytes("galois_keys")  # serialise first, if this context never has
        self.galois_keys = {}

    def parms_id(self, level: int) -> list[int]:
        if not 0 <= level <= self.top_level:
            raise LevelError(f"level {level} outside 0..{self.top_level}")
        return self._parms_ids[level]

    def level(self, ct: Ciphertext | Any) -> int:
        seal_ct = ct.seal if isinstance(ct, Ciphertext) else ct
        data = self.seal.get_context_data(seal_ct.parms_id())
        if data is None:
            raise SecurityError(f"ciphertext of another parameter set used in context {self.params.name}")
        return data.chain_index()

    def check(self, ct: Ciphertext) -> Ciphertext:
        if not isinstance(ct, Ciphertext):
            raise ProtocolError(f"expected a Ciphertext, got {type(ct).__name__}")
        if ct.context_id != self.context_id:
            raise SecurityError(
                f"ciphertext from FHE context {ct.context_id.hex()[:12]} used in context {self.context_id.hex()[:12]}"
            )
        if self.seal.get_context_data(ct.seal.parms_id()) is None:
            raise SecurityError(f"ciphertext of another parameter set used in context {self.params.name}")
        return ct

    # ----- encoding, encryption --------------------------------------------------------------------
    def encode(
        self,
        values: np.ndarray | Iterable[float] | float,
        level: int | None = None,
        scale: float | None = None,
    ) -> Any:
        """Encode a slot vector (zero-padded) or a scalar at ``level`` (default top) and ``scale``."""
        pt = sealapi.Plaintext()
        lvl = self.top_level if level is None else level
        sc = self.params.scale if scale is None else scale
        if np.isscalar(values):
            self.encoder.encode(float(values), self.parms_id(lvl), sc, pt)
        else:
            arr = np.asarray(values, dtype=np.float64).ravel()
            if arr.size > self.slots:
                raise ValueError(f"{arr.size} values do not fit {self.slots} slots")
            if not np.all(np.isfinite(arr)):
                raise ValueError("cannot encode NaN or infinite values")
            self.encoder.encode(arr.tolist(), self.parms_id(lvl), sc, pt)
        return pt

    def encrypt_slots(self, slots: np.ndarray, layout: Layout, level: int | None = None) -> Ciphertext:
        """Encrypt a full slot vector under the public key (anyone holding the context may do this)."""
        ct = sealapi.Ciphertext(self.seal)
        self._encryptor.encrypt(self.encode(slots, level), ct)
        return Ciphertext(ct, self.context_id, layout)

    def encrypt_zero(self, out: Any, level: int, scale: float) -> None:
        """A fresh public-key encryption of zero at ``level``, labelled with ``scale``."""
        self._encryptor.encrypt_zero(self.parms_id(level), out)
        out.scale = scale

    def decode(self, pt: Any) -> np.ndarray:
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)

    # ----- bytes ------------------------------------------------------------------------------------
    def ciphertext_to_bytes(self, ct: Ciphertext) -> bytes:
        self.check(ct)
        return serial.pack(
            "ciphertext",
            self.context_id,
            serial.seal_to_bytes(ct.seal),
            level=self.level(ct),
            scale=ct.seal.scale,
            meta={"layout": ct.layout.to_dict()},
        )

    def ciphertext_from_bytes(self, data: bytes) -> Ciphertext:
        env = serial.unpack(data, "ciphertext", self.context_id)
        layout = Layout.from_dict(env.meta.get("layout", {}))
        span = layout.rows * layout.block * (2 if layout.form == "rows_cyc" else 1)
        if (
            layout.form not in LAYOUT_FORMS
            or min(layout.length, layout.rows, layout.block) < 1
            or layout.length > layout.block
            or span > self.slots
            or layout.shift < 0
        ):
            raise ProtocolError(f"ciphertext layout {layout.to_dict()} does not fit {self.slots} slots")
        if not 0 <= env.level <= self.top_level:
            raise ProtocolError(
                f"ciphertext declares level {env.level}, this context has 0..{self.top_level}"
            )
        ct = serial.seal_from_bytes(sealapi.Ciphertext(self.seal), self.seal, env.payload, "ciphertext")
        if self.level(ct) != env.level or ct.scale != env.scale:
            raise ProtocolError("ciphertext header disagrees with its payload (level or scale)")
        return Ciphertext(ct, self.context_id, layout)


@dataclass
class SecretKey:
    """The data owner's secret key, with the decryptor and a symmetric encryptor built from it.

    It is bound to one context id and serialises on its own; it is never part of :class:`CkksContext`
    nor of its payload, and nothing here logs it.
    """

    params: ParamSet
    seal_context: Any
    key: Any
    context_id: bytes
    _decryptor: Any = None
    _encryptor: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._decryptor = sealapi.Decryptor(self.seal_context, self.key)
        self._encryptor = sealapi.Encryptor(self.seal_context, self.key)

    def __repr__(self) -> str:  # never print key material
        return f"SecretKey(params={self.params.name}, context={self.context_id.hex()[:12]})"

    def decrypt_plaintext(self, ctx: CkksContext, ct: Ciphertext) -> Any:
        """The decrypted SEAL plaintext (NTT form, at the ciphertext's level); stays with the owner."""
        ctx.check(ct)
        if ct.context_id != self.context_id:
            raise SecurityError("secret key belongs to another FHE context")
        pt = sealapi.Plaintext()
        self._decryptor.decrypt(ct.seal, pt)
        return pt

    def decrypt_slots(self, ctx: CkksContext, ct: Ciphertext) -> np.ndarray:
        return ctx.decode(self.decrypt_plaintext(ctx, ct))

    def encrypt_seeded_bytes(self, ctx: CkksContext, slots: np.ndarray, layout: Layout) -> bytes:
        """Encrypt under the secret key and serialise with SEAL's seed compression: the second
        polynomial is replaced by its PRNG seed, so the upload is about half a public-key ciphertext.
        Only the key holder can do this; the receiver loads it with ``ciphertext_from_bytes``."""
        return self.encrypt_plaintext_seeded_bytes(ctx, ctx.encode(slots), layout)

    def encrypt_plaintext_seeded_bytes(self, ctx: CkksContext, pt: Any, layout: Layout) -> bytes:
        """:meth:`encrypt_seeded_bytes` of a SEAL plaintext already encoded (NTT form, any level and
        scale): what the refresh answer uses for its integer polynomial."""
        if ctx.context_id != self.context_id:
            raise SecurityError("secret key belongs to another FHE context")
        seeded = self._encryptor.encrypt_symmetric(pt)
        return serial.pack(
            "ciphertext",
            self.context_id,
            serial.seal_to_bytes(seeded),
            level=ctx.level(pt),
            scale=pt.scale,
            meta={"layout": layout.to_dict()},
        )

    def to_bytes(self) -> bytes:
        return serial.pack("secret_key", self.context_id, serial.seal_to_bytes(self.key, secret=True))

    @classmethod
    def from_bytes(cls, params: ParamSet, data: bytes, context_id: bytes | None = None) -> SecretKey:
        env = serial.unpack(data, "secret_key", context_id)
        seal_ctx = CkksContext.seal_context(params)
        key = serial.seal_from_bytes(sealapi.SecretKey(), seal_ctx, env.payload, "secret_key")
        return cls(params, seal_ctx, key, env.context_id)


def _checked_steps(raw: Any, slots: int) -> tuple[int, ...]:
    """Rotation steps from the wire: a list of distinct integers in 1..slots-1, sorted."""
    if not isinstance(raw, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise ProtocolError("Galois key steps must be a list of integers")
    if any(not 0 < s < slots for s in raw) or len(set(raw)) != len(raw) or raw != sorted(raw):
        raise ProtocolError(f"Galois key steps must be distinct, sorted and within 1..{slots - 1}")
    return tuple(raw)


def _checked_sizes(raw: Any, steps: tuple[int, ...], total: int) -> list[int] | None:
    """Per-step byte sizes of a Galois key payload in the one-object-per-step form (None: one object
    holds every step); they must cut the payload exactly."""
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != len(steps)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in raw)
        or sum(raw) != total
    ):
        raise ProtocolError("Galois key sizes must be one positive integer per step, summing to the payload")
    return raw


def _load_galois_keys(
    seal_ctx: Any, payload: bytes | memoryview, steps: tuple[int, ...], sizes: list[int] | None
) -> dict[int, Any]:
    """SEAL Galois key objects from a payload, as the step -> object map a context holds; each object
    must hold the keys for the steps it is declared for."""
    if not steps:
        if len(payload):
            raise ProtocolError("Galois keys declare no rotation steps but carry key material")
        return {}
    view = memoryview(payload)
    if sizes is None:
        parts = [(steps, view)]
    else:
        ends = np.cumsum(sizes).tolist()
        parts = [((s,), view[e - n : e]) for s, n, e in zip(steps, sizes, ends, strict=True)]
    tool = seal_ctx.key_context_data().galois_tool()
    keys: dict[int, Any] = {}
    for part_steps, blob in parts:
        obj = serial.seal_from_bytes(sealapi.GaloisKeys(), seal_ctx, blob, "galois_keys")
        if not all(obj.has_key(e) for e in tool.get_elts_from_steps(list(part_steps))):
            raise ProtocolError("Galois keys do not cover the rotation steps they declare")
        keys.update(dict.fromkeys(part_steps, obj))
    return keys


def _galois_key_bytes(keys: dict[int, Any], steps: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
    """Serialise a step -> object map: one blob per step with their sizes in the metadata when every
    step has its own object, else the single object that holds them all."""
    meta: dict[str, Any] = {"steps": list(steps)}
    if not steps:
        return b"", meta  # SEAL cannot load an empty key set
    objects = {id(keys[s]) for s in steps}
    if len(objects) == 1:
        return serial.seal_to_bytes(keys[steps[0]]), meta
    if len(objects) != len(steps):
        raise ProtocolError("Galois keys must be one object per step or one object for all steps")
    return _per_step_payload([serial.seal_to_bytes(keys[s]) for s in steps], steps)


def _per_step_payload(blobs: list[bytes], steps: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
    """The one-object-per-step form: the blobs back to back, their sizes in the metadata."""
    return b"".join(blobs), {"steps": list(steps), "sizes": [len(b) for b in blobs]}


def keygen(
    params: ParamSet, galois_steps: Iterable[int] = (), keep_galois_keys: bool = True
) -> tuple[CkksContext, SecretKey]:
    """Generate a key pair: the public :class:`CkksContext` (with only the Galois keys for
    ``galois_steps``) and the separate :class:`SecretKey`.

    Each Galois key is made, serialised and (with ``keep_galois_keys=False``, for a key holder that
    never rotates) dropped one step at a time. Why: SEAL's compressed save buffers a whole object
    uncompressed before it compresses it, so one object for all steps costs the key set two to three
    times over at its peak (at N = 32768 that alone exceeded 23 GB); per step, the transient is one
    key (~0.2 GB there)."""
    seal_ctx = CkksContext.seal_context(params)
    kg = sealapi.KeyGenerator(seal_ctx)
    pk = sealapi.PublicKey()
    kg.create_public_key(pk)
    rk = sealapi.RelinKeys()
    kg.create_relin_keys(rk)
    steps = tuple(sorted({int(s) % params.slots for s in galois_steps} - {0}))
    tool = seal_ctx.key_context_data().galois_tool()
    gk: dict[int, Any] = {}
    blobs: list[bytes] = []
    for step in steps:
        obj = sealapi.GaloisKeys()
        kg.create_galois_keys(tool.get_elts_from_steps([step]), obj)
        blobs.append(serial.seal_to_bytes(obj))
        if keep_galois_keys:
            gk[step] = obj
        del obj
    raw = {"public_key": serial.seal_to_bytes(pk), "relin_keys": serial.seal_to_bytes(rk)}
    galois_raw, galois_meta = _per_step_payload(blobs, steps) if steps else (b"", {"steps": []})
    del blobs
    cid = CkksContext.compute_id(params, raw["public_key"], raw["relin_keys"], galois_raw, steps)
    ctx = CkksContext(
        params, seal_ctx, sealapi.CKKSEncoder(seal_ctx), sealapi.Evaluator(seal_ctx), pk, rk, gk, steps, cid
    )
    ctx._key_envelopes = {k: serial.pack(k, cid, v) for k, v in raw.items()}
    ctx._key_envelopes["galois_keys"] = serial.pack("galois_keys", cid, galois_raw, meta=galois_meta)
    sk = SecretKey(params, seal_ctx, kg.secret_key(), cid)
    return ctx, sk
