"""Sealed storage for enclave state: checkpoints and the provisioned model (ours).

Sealing encrypts a payload under a key that only the enclave can derive: HKDF-SHA256 of the
platform's sealing secret and the enclave's code measurement, the analogue of SGX's MRENCLAVE
sealing policy (a different enclave build cannot unseal). The simulated platform secret is a file
from ``p3eft keys init``; on real hardware the key comes from the TEE (SGX ``EGETKEY``, SEV-SNP
``MSG_KEY_REQ``, a TDX-bound KMS), which is the extension point.

A sealed file is ``magic | version | label length | label | 12-byte nonce | AES-256-GCM(payload)``
with the header as authenticated data, so a file cannot be swapped for another label's. Writes are
atomic (temporary file, fsync, rename, fsync of the directory): after a ``kill -9`` at any moment
the file is either the old checkpoint or the new one, never half of each.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p3eft.errors import MissingResourceError, SecurityError
from p3eft.runtime import codec

_MAGIC = b"P3SEAL"
_VERSION = 1
_UNLIMITED = codec.CodecLimits(max_bytes=2**40, max_items=2**40)


def sealing_key(platform_secret: bytes, measurement: bytes) -> bytes:
    """The enclave's sealing key: bound to the platform secret and to the enclave code."""
    if len(platform_secret) < 32:
        raise SecurityError("platform sealing secret must be at least 32 bytes")
    return HKDF(hashes.SHA256(), 32, salt=measurement, info=b"p3eft-seal-v1").derive(platform_secret)


def _read_header(blob: bytes) -> tuple[int, bytes, int] | None:
    """``(version, raw label, header length)`` of a sealed blob, or None without the magic and room
    for a nonce."""
    head = len(_MAGIC) + 4
    if len(blob) < head + 12 or not blob.startswith(_MAGIC):
        return None
    version, n = struct.unpack_from("<HH", blob, len(_MAGIC))
    return version, blob[head : head + n], head + n


def sealed_label(blob: bytes) -> str | None:
    """The label in a sealed blob's header (public: it is authenticated, not encrypted), or None when
    ``blob`` is not a well-formed sealed blob. Lets a party check what kind of sealed state it holds or
    forwards without the key."""
    parsed = _read_header(blob) if isinstance(blob, bytes) else None
    if parsed is None:
        return None
    version, raw_label, end = parsed
    if version != _VERSION or len(blob) < end + 12 + 16:
        return None
    try:
        return raw_label.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Sealer:
    """Encrypt/decrypt payloads under a sealing key, and write/read them atomically.

    Errors name the file relative to ``root`` (the enclave's state folder), so a message that
    reaches a remote party says which file failed without revealing the enclave's own paths.
    """

    def __init__(self, key: bytes, root: str | Path | None = None) -> None:
        self._aead = AESGCM(key)
        self.root = Path(root) if root is not None else None

    def name(self, path: str | Path) -> str:
        p = Path(path)
        if self.root is not None:
            try:
                return p.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return p.name

    def seal(self, payload: Any, label: str) -> bytes:
        raw_label = label.encode("utf-8")
        header = _MAGIC + struct.pack("<HH", _VERSION, len(raw_label)) + raw_label
        nonce = os.urandom(12)
        return header + nonce + self._aead.encrypt(nonce, codec.encode(payload), header)

    def unseal(self, blob: bytes, label: str, what: str = "sealed file") -> Any:
        parsed = _read_header(blob)
        if parsed is None:
            raise SecurityError(f"{what} is not a sealed p3eft file (or truncated)")
        version, raw_label, end = parsed
        if version != _VERSION:
            raise SecurityError(f"{what}: unsupported sealed-file version {version}")
        if raw_label != label.encode("utf-8"):
            found = raw_label.decode("utf-8", "replace")
            raise SecurityError(f"{what} is sealed as {found!r}, expected {label!r} (swapped or stale file)")
        header = blob[:end]
        nonce = blob[end : end + 12]
        try:
            plain = self._aead.decrypt(nonce, blob[end + 12 :], header)
        except InvalidTag as err:
            raise SecurityError(
                f"{what} failed authentication: tampered, or sealed by another enclave build/platform"
            ) from err
        return codec.decode(plain, _UNLIMITED)

    def write(self, path: str | Path, payload: Any, label: str) -> None:
        """Seal ``payload`` and replace ``path`` atomically."""
        atomic_write(Path(path), self.seal(payload, label))

    def read(self, path: str | Path, label: str) -> Any:
        p = Path(path)
        if not p.is_file():
            raise MissingResourceError(f"sealed file {self.name(p)} not found")
        return self.unseal(p.read_bytes(), label, f"sealed file {self.name(p)}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CheckpointStore:
    """One session's sealed checkpoint: one file, replaced atomically every K steps.

    The label binds the model upload and the session (a checkpoint of another session or another
    upload does not load), and the sealed content carries a counter that grows with every
    checkpoint: :meth:`load` refuses one older than the newest this store has written or read
    (ours; a TEE's hardware monotonic counter would also survive a restart of the host, see
    docs/runtime.md).
    """

    def __init__(self, directory: str | Path, sealer: Sealer, label: str) -> None:
        self.path = Path(directory) / "checkpoint.sealed"
        self.sealer = sealer
        self.label = label
        self.counter = 0  # newest counter written or read

    def save(self, state: dict) -> None:
        self.counter += 1
        self.sealer.write(self.path, {"counter": self.counter, "state": state}, self.label)

    def load(self) -> dict | None:
        """The last checkpoint, or None when none was written yet; refuses a detectable rollback."""
        if not self.path.is_file():
            if self.counter:
                raise SecurityError(
                    f"sealed file {self.sealer.name(self.path)} is gone after checkpoint {self.counter} "
                    "was written (deleted or rolled back)"
                )
            return None
        sealed = self.sealer.read(self.path, self.label)
        counter = int(sealed["counter"])
        if counter < self.counter:
            raise SecurityError(
                f"sealed file {self.sealer.name(self.path)} is checkpoint {counter}, older than "
                f"checkpoint {self.counter} (rolled back)"
            )
        self.counter = counter
        return sealed["state"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
