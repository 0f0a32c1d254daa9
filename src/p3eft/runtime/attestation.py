"""Enclave attestation: an abstract Attestor/Verifier pair and a *simulated* backend (ours).

Flow (see ``docs/runtime.md``): a party that is about to send a secret to the enclave first sends
a fresh random nonce; the enclave answers with *evidence* that binds (a) a measurement of all the
code the enclave process can run (the whole ``p3eft`` package and any role factory loaded from
outside it), (b) the enclave's freshly generated X25519 public key, (c) the nonce and (d) the
enclave's effective configuration (the report data), signed by the platform. The verifier checks
the signature, the expected measurement, the nonce and its own policy on the configuration, and only
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
import json
import site
import struct
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from p3eft.errors import P3eftError, SecurityError

_DOMAIN = b"p3eft-simulated-quote-v2"
NONCE_BYTES = 32
DEFAULT_MAX_AGE_S = 300.0
PACKAGE = "p3eft"


def package_files() -> list[Path]:
    """Every file of the installed ``p3eft`` package that the enclave process could execute or read.

    The whole package, not a list of modules: the enclave process imports the CLI, the runtime and
    the scheme, and any of them could leak what it holds (ours).
    """
    root = Path(importlib.util.find_spec(PACKAGE).origin).parent
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_measurement(extra_files: Sequence[str | Path] = ()) -> bytes:
    """SHA-256 over every file of the ``p3eft`` package and over ``extra_files`` (role factories
    loaded from outside the package), each by relative name, length and content.

    Real TEEs measure the loaded pages; hashing the sources is the simulated analogue, and like
    MRENCLAVE it changes whenever any code the enclave process can run changes.
    """
    root = Path(importlib.util.find_spec(PACKAGE).origin).parent
    h = hashlib.sha256(b"p3eft-measurement-v3")
    for path in package_files():
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    for extra in extra_files:
        data = Path(extra).read_bytes()
        h.update(f"extra:{Path(extra).name}\0{len(data)}\0".encode())
        h.update(data)
    return h.digest()


def unmeasured_modules(measured_files: Sequence[str | Path] = ()) -> list[str]:
    """Modules loaded in this process whose code is neither in the measured package, nor in
    ``measured_files``, nor part of the Python installation (standard library, site-packages).

    The enclave refuses to serve if any exists: code that the quote does not cover must not run
    next to the secrets (ours; third-party libraries are trusted as installed, see docs/runtime.md).
    """
    root = Path(importlib.util.find_spec(PACKAGE).origin).parent.resolve()
    trusted = {Path(p).resolve() for p in measured_files}
    system = {
        Path(p).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    system |= {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    bad = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str) or not Path(origin).is_absolute() or not Path(origin).is_file():
            continue  # built-in or synthetic modules (torch.ops): no file whose code could run
        path = Path(origin).resolve()
        if path in trusted or path.is_relative_to(root) or any(path.is_relative_to(s) for s in system):
            continue
        bad.append(f"{name} ({path})")
    return sorted(bad)


def config_digest(config: dict) -> bytes:
    """SHA-256 of a configuration in canonical JSON: what a quote's report data binds."""
    return hashlib.sha256(canonical_json(config)).digest()


def canonical_json(config: dict) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class Attested:
    """What a verified quote vouches for: the enclave's key, its code and its configuration."""

    public_key: bytes
    measurement: bytes
    config: dict


def parse_expect(text: str | Sequence[str] | None) -> dict[str, str]:
    """``"mode=strict,masks=orthogonal"`` (or several such strings) -> a policy dict."""
    items: list[str] = []
    for part in [text] if isinstance(text, str) else list(text or []):
        items += [x for x in part.split(",") if x.strip()]
    policy = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise P3eftError(f"bad --expect entry {item!r}: expected KEY=VALUE, e.g. mode=strict")
        policy[key.strip()] = value.strip()
    return policy


def check_policy(config: dict, policy: dict[str, object]) -> None:
    """Refuse an attested configuration that differs from the verifier's policy on any key."""
    for key, want in policy.items():
        if key not in config:
            raise SecurityError(
                f"attestation failed: the enclave's configuration has no {key!r} (policy {want})"
            )
        if not _same(config[key], want):
            raise SecurityError(
                f"attestation failed: the enclave runs with {key}={config[key]}, the policy expects {want}"
            )


def _same(a: object, b: object) -> bool:
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)


class Attestor(ABC):
    """The enclave side: produce evidence for a nonce and the enclave's public key."""

    backend: str

    @abstractmethod
    def evidence(self, nonce: bytes, enclave_public_key: bytes, config: dict) -> dict:
        """Evidence binding the enclave measurement, ``enclave_public_key``, ``nonce`` and ``config``."""


class Verifier(ABC):
    """The relying party's side: check evidence and return the attested enclave public key."""

    @abstractmethod
    def verify(self, evidence: dict, nonce: bytes) -> Attested:
        """Return what the evidence attests, or raise :class:`SecurityError`."""


def _quote_body(
    measurement: bytes, public_key: bytes, nonce: bytes, timestamp: float, report_data: bytes
) -> bytes:
    return b"".join((_DOMAIN, measurement, public_key, nonce, struct.pack("<d", timestamp), report_data))


K = TypeVar("K")


def _platform_key(load: Callable[[bytes], object], pem: bytes, kind: type[K], what: str) -> K:
    """Parse a platform key file with ``load``: a corrupt or foreign file is one :class:`SecurityError`
    line for the user (as :mod:`p3eft.runtime.pki` does for certificates), not cryptography's traceback."""
    try:
        key = load(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise SecurityError(f"the {what} is not a readable PEM key; run `p3eft keys init --force`") from err
    if not isinstance(key, kind):
        raise SecurityError(f"the {what} must be Ed25519")
    return key


class SimulatedAttestor(Attestor):
    """Signs quotes with the simulated platform key (development only; see module docstring)."""

    backend = "simulated"

    def __init__(self, platform_key_pem: bytes, measurement: bytes | None = None) -> None:
        self._key = _platform_key(
            lambda pem: serialization.load_pem_private_key(pem, password=None),
            platform_key_pem,
            ed25519.Ed25519PrivateKey,
            "platform attestation key (platform-attest.key)",
        )
        self.measurement = measurement if measurement is not None else code_measurement()

    def evidence(self, nonce: bytes, enclave_public_key: bytes, config: dict) -> dict:
        ts = time.time()
        raw_config = canonical_json(config)
        body = _quote_body(
            self.measurement, enclave_public_key, nonce, ts, hashlib.sha256(raw_config).digest()
        )
        return {
            "backend": self.backend,
            "measurement": self.measurement,
            "public_key": enclave_public_key,
            "nonce": nonce,
            "timestamp": ts,
            "config": raw_config,
            "signature": self._key.sign(body),
        }


class SimulatedVerifier(Verifier):
    """Checks simulated quotes: platform signature, expected measurement, nonce, age and the
    attested configuration against ``policy`` (key -> expected value)."""

    def __init__(
        self,
        platform_public_pem: bytes,
        expected_measurement: bytes | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        policy: dict[str, object] | None = None,
    ) -> None:
        self._key = _platform_key(
            serialization.load_pem_public_key,
            platform_public_pem,
            ed25519.Ed25519PublicKey,
            "platform attestation public key (platform-attest.pub)",
        )
        self.expected = expected_measurement if expected_measurement is not None else code_measurement()
        self.max_age_s = max_age_s
        self.policy = dict(policy or {})

    def verify(self, evidence: dict, nonce: bytes) -> Attested:
        try:
            backend = evidence["backend"]
            measurement = evidence["measurement"]
            public_key = evidence["public_key"]
            quoted_nonce = evidence["nonce"]
            ts = float(evidence["timestamp"])
            signature = evidence["signature"]
            raw_config = evidence["config"]
        except (KeyError, TypeError, ValueError) as err:
            raise SecurityError(f"attestation failed: malformed evidence ({err})") from err
        if backend != "simulated":
            raise SecurityError(f"attestation failed: verifier expects simulated evidence, got {backend!r}")
        if not all(
            isinstance(x, bytes) for x in (measurement, public_key, quoted_nonce, signature, raw_config)
        ):
            raise SecurityError("attestation failed: malformed evidence fields")
        try:
            body = _quote_body(measurement, public_key, quoted_nonce, ts, hashlib.sha256(raw_config).digest())
            self._key.verify(signature, body)
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
        try:
            config = json.loads(raw_config)
        except ValueError as err:
            raise SecurityError("attestation failed: attested configuration is not JSON") from err
        if not isinstance(config, dict):
            raise SecurityError("attestation failed: attested configuration is not an object")
        check_policy(config, self.policy)
        return Attested(public_key, measurement, config)
