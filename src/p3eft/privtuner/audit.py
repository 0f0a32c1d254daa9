"""Transcript audit: what the model owner received, and what the data owner's refresh views reveal (ours).

Three checks, run on a recorded protocol run (:class:`RecordingChannel` on the data owner's link):

Run them on a recorded transcript (tests) or online with :class:`AuditingChannel` (``verify``; no
transcript is held, so long runs fit in memory).

1. :func:`audit_model_owner_inbox` -- every field of every request the model owner received is either a
   control field the protocol allows for that method (:data:`p3eft.privtuner.protocol.CONTROL_FIELDS`)
   or ``bytes`` that the engine's *checked* envelope parser accepts as a ciphertext or public key
   material (parameters, public, relinearisation and Galois keys) of the session's own context, or
   (end policy ``encrypted``) a checkpoint the model owner sealed itself and gets back unopened. An
   array, a float where a ciphertext belongs, a secret key or an unknown field is a violation.
2. :func:`find_decryptions_in_inbox` -- no decryption result reaches the model owner: the float64 bytes
   of the values the data owner decrypted (refresh views, logits, adapter) are searched for in every
   request, and control fields are compared with them.
3. :func:`refresh_view_test` -- the data owner's refresh views do not depend on the message: views of
   refreshes of two different messages are compared with a two-sample Kolmogorov-Smirnov test, and
   :func:`normalised_views` against the uniform law of the mask. A too narrow mask (the negative control
   in the tests) is detected by the same test.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.channel import Channel
from p3eft.errors import P3eftError
from p3eft.fhe import serial
from p3eft.fhe.params import ParamSet
from p3eft.fhe.refresh import mask_bits
from p3eft.privtuner import protocol as P
from p3eft.runtime.sealing import sealed_label


@dataclass
class Exchange:
    """One call on the data owner's link: what the model owner received, and what it answered."""

    method: str
    request: dict[str, Any]
    reply: Any


class RecordingChannel:
    """A :class:`~p3eft.channel.Channel` wrapper keeping the transcript (audit runs only: it holds every
    payload in memory)."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.transcript: list[Exchange] = []

    def call(self, method: str, /, **kwargs: Any) -> Any:
        reply = self.inner.call(method, **kwargs)
        self.transcript.append(Exchange(method, kwargs, reply))
        return reply

    def close(self) -> None:
        self.inner.close()


@dataclass
class InboxReport:
    """Result of :func:`audit_model_owner_inbox` (JSON-ready via :meth:`to_dict`)."""

    messages: int = 0
    ciphertexts: int = 0
    key_material: int = 0
    sealed_states: int = 0  # the model owner's own sealed checkpoints, handed back
    control_fields: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "ciphertexts": self.ciphertexts,
            "key_material": self.key_material,
            "sealed_states": self.sealed_states,
            "control_fields": dict(self.control_fields),
            "violations": list(self.violations),
            "clean": self.clean,
        }


def _check_envelopes(
    value: Any, kinds: tuple[str, ...], context_id: bytes | None, where: str, rep: InboxReport
):
    """Every leaf of ``value`` must parse as one of ``kinds`` with the checked parser."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_envelopes(v, kinds, context_id, f"{where}[{i}]", rep)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "params" and "params" in kinds:
                try:
                    ParamSet.from_json(v)
                    rep.key_material += 1
                except (P3eftError, TypeError, ValueError) as err:
                    rep.violations.append(f"{where}.params is not a parameter-set description: {err}")
                continue
            _check_envelopes(v, tuple(x for x in kinds if x != "params"), context_id, f"{where}.{k}", rep)
        return
    if not isinstance(value, bytes):
        rep.violations.append(f"{where}: a {type(value).__name__} where only ciphertext/key bytes may be")
        return
    errors = []
    for kind in kinds:
        if kind == "sealed_state":  # the model owner's own sealed checkpoint, handed back unopened
            label = sealed_label(value)
            if label is not None and label.startswith(P.SEALED_STATE_LABEL + ":"):
                rep.sealed_states += 1
                return
            errors.append("not a sealed PrivTuner state")
            continue
        try:
            serial.unpack(value, kind, context_id)
        except P3eftError as err:
            errors.append(str(err))
            continue
        if kind == "ciphertext":
            rep.ciphertexts += 1
        else:
            rep.key_material += 1
        return
    rep.violations.append(
        f"{where}: not a checked {'/'.join(kinds)} envelope ({errors[0] if errors else ''})"
    )


class InboxChecker:
    """Check 1, one request at a time (what :class:`AuditingChannel` runs as messages pass)."""

    def __init__(self) -> None:
        self.report = InboxReport()
        self._context_id: bytes | None = None

    def check(self, method: str, request: dict[str, Any]) -> None:
        rep = self.report
        rep.messages += 1
        controls = P.CONTROL_FIELDS.get(method)
        if controls is None:
            rep.violations.append(f"{method}: not a method of the PrivTuner model owner")
            return
        data_fields = P.SECRET_FREE_BYTES.get(method, {})
        for name, value in request.items():
            where = f"{method}.{name}"
            if name in data_fields:
                _check_envelopes(value, data_fields[name], self._context_id, where, rep)
            elif name in controls:
                if not isinstance(value, controls[name]) or isinstance(value, bytes):
                    rep.violations.append(f"{where}: control field of type {type(value).__name__}")
                elif isinstance(value, dict):  # session options: their own table
                    for k, v in value.items():
                        if k not in P.OPEN_OPTIONS or not isinstance(v, P.OPEN_OPTIONS[k]):
                            rep.violations.append(f"{where}.{k}: not an allowed session option")
                rep.control_fields[name] = rep.control_fields.get(name, 0) + 1
            else:
                rep.violations.append(f"{where}: field not allowed by the protocol")
        if method == P.KEYS and isinstance(request.get("keys"), dict):
            pk = request["keys"].get("public_key")
            with contextlib.suppress(P3eftError):
                self._context_id = serial.unpack(pk, "public_key").context_id


def audit_model_owner_inbox(transcript: list[Exchange]) -> InboxReport:
    """Check every field the model owner received (see the module docstring, check 1)."""
    checker = InboxChecker()
    for ex in transcript:
        checker.check(ex.method, ex.request)
    return checker.report


def _payload_bytes(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out.append(value)
    elif isinstance(value, list | tuple):
        for v in value:
            _payload_bytes(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _payload_bytes(v, out)
    elif isinstance(value, str):
        out.append(value.encode())


def _scalars(value: Any, out: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        out.append(float(value))
    elif isinstance(value, list | tuple):
        for v in value:
            _scalars(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _scalars(v, out)


def top_values(vec: np.ndarray, k: int = 8) -> np.ndarray:
    """The ``k`` non-zero values of largest magnitude (what the decryption search looks for)."""
    v = np.asarray(vec, dtype=np.float64).ravel()
    nz = v[v != 0.0]
    return nz[np.argsort(-np.abs(nz))[:k]]


class DecryptionSearch:
    """Check 2: float64 bytes of decrypted values, searched for in requests (all patterns at once).

    A chance match of 8 given bytes in random bytes has probability ~ 2^-64 per position. Each request
    is read once: 8 byte offsets, sorted lookup of every 8-byte word among the patterns. The key upload
    is not searched: the data owner sends it when the session opens, before its first decryption
    (check 1 has parsed it as key material).
    """

    def __init__(self, per_vector: int = 8) -> None:
        self.per_vector = per_vector
        self._owner: dict[int, tuple[int, float]] = {}
        self._values: dict[float, int] = {}
        self._patterns = np.zeros(0, dtype=np.uint64)
        self.vectors = 0
        self.found: list[str] = []

    def add(self, vec: np.ndarray) -> None:
        i = self.vectors
        self.vectors += 1
        for x in top_values(vec, self.per_vector):
            for word in (np.float64(x).view(np.uint64), np.float64(x).byteswap().view(np.uint64)):
                self._owner[int(word)] = (i, float(x))
            self._values[float(x)] = i
        self._patterns = np.array(sorted(self._owner), dtype=np.uint64)

    def search(self, method: str, request: dict[str, Any]) -> list[str]:
        found: list[str] = []
        scalars: list[float] = []
        _scalars(dict(request), scalars)
        for x in scalars:
            if x in self._values:
                found.append(f"decryption {self._values[x]}: value {x!r} sent as a control field of {method}")
        if method != P.KEYS and self._patterns.size:
            blobs: list[bytes] = []
            _payload_bytes(request, blobs)
            pats = self._patterns
            for blob in blobs:
                raw = np.frombuffer(blob, dtype=np.uint8)
                for offset in range(8):
                    n = (raw.size - offset) // 8
                    if n <= 0:
                        continue
                    words = raw[offset : offset + 8 * n].view(np.uint64)
                    idx = np.minimum(np.searchsorted(pats, words), pats.size - 1)
                    for w in np.unique(words[pats[idx] == words]):
                        i, x = self._owner[int(w)]
                        found.append(f"decryption {i}: value {x!r} found in a {method} request")
        self.found += found
        return found


def find_decryptions_in_inbox(
    transcript: list[Exchange], decrypted: list[np.ndarray], per_vector: int = 8
) -> list[str]:
    """Search the whole recorded inbox for every decrypted value (check 2; see :class:`DecryptionSearch`)."""
    search = DecryptionSearch(per_vector)
    for vec in decrypted:
        search.add(vec)
    for ex in transcript:
        search.search(ex.method, ex.request)
    return search.found


class AuditingChannel:
    """Checks 1 and 2 online, as the data owner's requests pass, holding no transcript: each request is
    checked against the protocol's tables and searched for every value the data owner had decrypted
    before sending it (a value cannot leak before it is known, so this covers every leak)."""

    def __init__(self, inner: Channel, decrypted: list[Any] | None = None) -> None:
        self.inner = inner
        self._decrypted: list[Any] = [] if decrypted is None else decrypted
        self._seen = 0
        self.inbox = InboxChecker()
        self.search = DecryptionSearch()

    def bind(self, decrypted: list[Any]) -> None:
        """Follow the data owner's list of decryptions (it is created with the data owner)."""
        self._decrypted, self._seen = decrypted, 0

    def call(self, method: str, /, **kwargs: Any) -> Any:
        new = self._decrypted[self._seen :]
        for d in new:
            self.search.add(getattr(d, "values", d))
        self._seen += len(new)
        self.inbox.check(method, kwargs)
        self.search.search(method, kwargs)
        return self.inner.call(method, **kwargs)

    def close(self) -> None:
        self.inner.close()

    def summary(self) -> dict[str, Any]:
        return verdict(self.inbox.report, self.search.found)


def verdict(inbox: InboxReport, leaks: list[str]) -> dict[str, Any]:
    return {
        "inbox": inbox.to_dict(),
        "decryption_results_in_inbox": list(leaks),
        "model_owner_saw_plaintext": bool(inbox.violations or leaks),
    }


def normalised_views(views: list[np.ndarray], bound: float, lam: int, scale: float) -> np.ndarray:
    """Refresh views (the decrypted integer coefficients) divided by the mask width
    W = 2^(lambda + ceil(log2((bound + 1) * scale))): uniform on [-1, 1) if hiding holds."""
    width = float(2 ** mask_bits(bound, scale, lam))
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in views]) / width


@dataclass(frozen=True)
class ViewTest:
    """Outcome of a statistical test on refresh views."""

    statistic: float
    p_value: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return {"ks_statistic": self.statistic, "p_value": self.p_value, "samples": self.samples}


def refresh_view_test(views_a: np.ndarray, views_b: np.ndarray) -> ViewTest:
    """Two-sample Kolmogorov-Smirnov test: do views of message A and of message B differ in law?"""
    from scipy.stats import ks_2samp

    a, b = np.asarray(views_a).ravel(), np.asarray(views_b).ravel()
    res = ks_2samp(a, b)
    return ViewTest(float(res.statistic), float(res.pvalue), int(min(a.size, b.size)))


def uniformity_test(normalised: np.ndarray) -> ViewTest:
    """One-sample Kolmogorov-Smirnov test of normalised views against the mask's uniform law on [-1, 1]."""
    from scipy.stats import kstest

    x = np.asarray(normalised).ravel()
    res = kstest(x, "uniform", args=(-1.0, 2.0))
    return ViewTest(float(res.statistic), float(res.pvalue), int(x.size))


def summary(transcript: list[Exchange], decrypted: list[np.ndarray]) -> dict[str, Any]:
    """The audit's verdict for a recorded run: inbox check + decryption search; ``model_owner_saw_plaintext``."""
    return verdict(audit_model_owner_inbox(transcript), find_decryptions_in_inbox(transcript, decrypted))


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
