"""Enclave attestation: an abstract Attestor/Verifier pair and a *simulated* backend (ours).

Flow (see ``docs/runtime.md``): a party that is about to send a secret to the enclave first sends
a fresh random nonce; the enclave answers with *evidence* that binds (a) a measurement of the
enclave code, (b) the enclave's freshly generated X25519 public key and (c) the nonce, signed by
the platform. The verifier checks the signature, the expected measurement and the nonce, and only
then derives a session key with the attested public key (:mod:`p3eft.runtime.session`); every
later payload on that session is encrypted to it, so secrets reach only the attested key.

The simulated backend signs with an Ed25519 "platform" key from ``p3eft keys init``. It protects
**nothing** against the host: whoever runs the enclave process can read that key, the process
memory and the sealing secret. It exists so the protocol, the refusal paths and the code layout are
real and tested; the extension points for real hardware are :class:`Attestor` and
:class:`Verifier` (Gramine RA-TLS quotes, AMD SEV-SNP / Intel TDX reports, NVIDIA NRAS for GPU
confidential computing), each of which produces/consumes the same ``evidence`` dict.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import time
from abc import ABC, abstractmethod
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from p3eft.errors import SecurityError

# The code whose hash is "the enclave": the p3eft modules the enclave process runs (the host, the
# transport it serves on, ObfuscaTune's enclave role). Data-owner and cloud code are not in it.
ENCLAVE_MODULES = (
    "p3eft.errors",
    "p3eft.runtime.attestation",
    "p3eft.channel",
    "p3eft.runtime.client",
    "p3eft.runtime.codec",
    "p3eft.runtime.enclave_host",
    "p3eft.runtime.errors",
    "p3eft.runtime.frame",
    "p3eft.runtime.launch",
    "p3eft.runtime.obfuscatune_roles",
    "p3eft.runtime.pki",
    "p3eft.runtime.resilient",
    "p3eft.runtime.sealing",
    "p3eft.runtime.server",
    "p3eft.runtime.session",
    "p3eft.obfuscatune.enclave",
    "p3eft.obfuscatune.masks",
    "p3eft.obfuscatune.split",
)
_DOMAIN = b"p3eft-simulated-quote-v1"
NONCE_BYTES = 32
DEFAULT_MAX_AGE_S = 300.0


def code_measurement(modules: tuple[str, ...] = ENCLAVE_MODULES) -> bytes:
    """SHA-256 over the enclave modules' source files (module name, length and content, in order).

    Real TEEs measure the loaded binary pages; hashing the sources is the simulated analogue, and
    like MRENCLAVE it changes whenever the enclave code changes. A module that is not installed
    counts as absent (its name is still hashed).
    """
    h = hashlib.sha256(b"p3eft-measurement-v2")
    for name in modules:
        spec = importlib.util.find_spec(name)
        data = Path(spec.origin).read_bytes() if spec is not None and spec.origin else b""
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.digest()


class Attestor(ABC):
    """The enclave side: produce evidence for a nonce and the enclave's public key."""

    backend: str

    @abstractmethod
    def evidence(self, nonce: bytes, enclave_public_key: bytes) -> dict:
        """Evidence binding the enclave measurement, ``enclave_public_key`` and ``nonce``."""


class Verifier(ABC):
    """The relying party's side: check evidence and return the attested enclave public key."""

    @abstractmethod
    def verify(self, evidence: dict, nonce: bytes) -> bytes:
        """Return the enclave public key the evidence attests, or raise :class:`SecurityError`."""


def _quote_body(measurement: bytes, public_key: bytes, nonce: bytes, timestamp: float) -> bytes:
    return b"".join((_DOMAIN, measurement, public_key, nonce, struct.pack("<d", timestamp)))


class SimulatedAttestor(Attestor):
    """Signs quotes with the simulated platform key (development only; see module docstring)."""

    backend = "simulated"

    def __init__(self, platform_key_pem: bytes, measurement: bytes | None = None) -> None:
        key = serialization.load_pem_private_key(platform_key_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SecurityError("platform attestation key must be Ed25519")
        self._key = key
        self.measurement = measurement if measurement is not None else code_measurement()

    def evidence(self, nonce: bytes, enclave_public_key: bytes) -> dict:
        ts = time.time()
        body = _quote_body(self.measurement, enclave_public_key, nonce, ts)
        return {
            "backend": self.backend,
            "measurement": self.measurement,
            "public_key": enclave_public_key,
            "nonce": nonce,
            "timestamp": ts,
            "signature": self._key.sign(body),
        }


class SimulatedVerifier(Verifier):
    """Checks simulated quotes: platform signature, expected measurement, nonce and age."""

    def __init__(
        self,
        platform_public_pem: bytes,
        expected_measurement: bytes | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        key = serialization.load_pem_public_key(platform_public_pem)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SecurityError("platform attestation public key must be Ed25519")
        self._key = key
        self.expected = expected_measurement if expected_measurement is not None else code_measurement()
        self.max_age_s = max_age_s

    def verify(self, evidence: dict, nonce: bytes) -> bytes:
        try:
            backend = evidence["backend"]
            measurement = evidence["measurement"]
            public_key = evidence["public_key"]
            quoted_nonce = evidence["nonce"]
            ts = float(evidence["timestamp"])
            signature = evidence["signature"]
        except (KeyError, TypeError, ValueError) as err:
            raise SecurityError(f"attestation failed: malformed evidence ({err})") from err
        if backend != "simulated":
            raise SecurityError(f"attestation failed: verifier expects simulated evidence, got {backend!r}")
        if not all(isinstance(x, bytes) for x in (measurement, public_key, quoted_nonce, signature)):
            raise SecurityError("attestation failed: malformed evidence fields")
        try:
            self._key.verify(signature, _quote_body(measurement, public_key, quoted_nonce, ts))
        except InvalidSignature as err:
            raise SecurityError("attestation failed: quote signature is not the platform's") from err
        if quoted_nonce != nonce:
            raise SecurityError("attestation failed: quote does not answer our nonce (stale or replayed)")
        if abs(time.time() - ts) > self.max_age_s:
            raise SecurityError(f"attestation failed: quote is older than {self.max_age_s:.0f} s")
        if measurement != self.expected:
            raise SecurityError(
                f"attestation failed: enclave measurement {measurement.hex()[:16]}... is not the "
                f"expected {self.expected.hex()[:16]}..."
            )
        if len(public_key) != 32:
            raise SecurityError("attestation failed: enclave public key is not an X25519 key")
        return public_key
