"""The data owner's training checkpoint (ours): a crash of either party loses at most one step.

An encrypted step of a real model takes minutes, a run hours, so a run must survive a crash of the
data owner's process, of the model owner's, or of the link. The data owner keeps everything a resumed
run needs; the model owner keeps nothing but its *state key*:

* the data owner's CKKS keys: the checkpoint's ciphertexts are under them. The public keys are stored
  as uploaded (``public_keys.bin``, written once: hundreds of MB with the Galois keys; public, and
  bound to the secret key by the context id, which is checked on load; written by the first save of
  each process, so a run killed before its first checkpoint leaves none of its keys behind); the
  secret key only sealed;
* the encrypted adapter and head after the last finished step
  (:meth:`~p3eft.privtuner.roles.ModelOwner.pt_checkpoint`). Under the ``export`` end policy they are
  ciphertexts under the data owner's key with the model owner's tag (HMAC); under ``encrypted`` one
  blob the model owner sealed under its own key (AES-GCM), which the data owner stores but cannot
  open. Either way the model owner refuses, on restore, any state it did not produce itself for these
  keys and this model: a data owner cannot load adapter values of its choosing into the model
  owner's computation;
* the run's progress (steps done, losses, per-step costs) and its identity (model, data, schedule),
  so a resume with other settings is refused instead of silently mixing two runs.

Sealing: ``state.sealed`` is AES-256-GCM under a key derived with scrypt from the data owner's
passphrase (:data:`PASSPHRASE_ENV`), written atomically (a ``kill -9`` leaves the old or the new
checkpoint, never a mix), so the secret key never reaches a disk in the clear. The salt and scrypt
cost are in ``kdf.json``. A resumed run opens a new session (the model owner draws a new secret
rotation; only the adapter is carried over) and continues from the next step of the same plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from p3eft.errors import MissingResourceError, P3eftError, SecurityError
from p3eft.fhe.context import CkksContext, SecretKey
from p3eft.runtime import codec
from p3eft.runtime.sealing import Sealer, atomic_write

PASSPHRASE_ENV = "P3EFT_CHECKPOINT_PASSPHRASE"
LABEL = "p3eft-privtuner-data-owner-checkpoint-v1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # ours: ~32 MB and ~0.1 s per derivation
_KEY_LIMITS = codec.CodecLimits(max_bytes=2**40, max_items=2**20)


@dataclass
class Saved:
    """A loaded checkpoint: the keys, the model owner's tagged adapter, the run and its progress."""

    keys: tuple[CkksContext, SecretKey]
    state: dict[str, Any]  # {"adapter": {name: [ciphertext bytes]}, "tag": hex} or {"sealed": bytes}
    run: dict[str, Any]
    progress: dict[str, Any]


def passphrase_from_env() -> bytes:
    value = os.environ.get(PASSPHRASE_ENV, "")
    if len(value) < 8:
        raise P3eftError(
            f"checkpoints seal the data owner's secret key: set {PASSPHRASE_ENV} to a passphrase of at "
            "least 8 characters"
        )
    return value.encode()


class CheckpointDir:
    """One run's checkpoint folder on the data owner's side (module docstring)."""

    def __init__(self, folder: str | Path, passphrase: bytes) -> None:
        if len(passphrase) < 8:
            raise P3eftError("the checkpoint passphrase must have at least 8 characters")
        self.folder = Path(folder)
        self._passphrase = passphrase
        self._sealer: Sealer | None = None
        self._keys_written = False  # this process wrote its public keys (a killed run may have left others)

    @property
    def state_path(self) -> Path:
        return self.folder / "state.sealed"

    @property
    def keys_path(self) -> Path:
        return self.folder / "public_keys.bin"

    @property
    def kdf_path(self) -> Path:
        return self.folder / "kdf.json"

    def in_process_state_key(self) -> bytes:
        """The state key of a model owner that runs in the data owner's own process (the quick start,
        one user in both roles): kept beside the checkpoint, since that process may be the one that
        crashed. A networked model owner keeps its own (``serve privtuner-model-owner --state-key``)."""
        return model_owner_state_key(self.folder / "model-owner-state.key")

    def exists(self) -> bool:
        return self.state_path.is_file()

    def check_start(self, resume: bool) -> None:
        """A new run never overwrites an old run's checkpoint (``resume`` continues it instead)."""
        if self.exists() and not resume:
            raise P3eftError(
                f"{self.folder} already holds a checkpoint: pass --resume to continue that run, "
                "or choose another --out"
            )

    def _sealer_for(self, create: bool) -> Sealer:
        if self._sealer is not None:
            return self._sealer
        if self.kdf_path.is_file():
            kdf = json.loads(self.kdf_path.read_text())
            salt, n, r, p = bytes.fromhex(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        elif create:
            salt, n, r, p = os.urandom(16), SCRYPT_N, SCRYPT_R, SCRYPT_P
            kdf = {"kdf": "scrypt", "salt": salt.hex(), "n": n, "r": r, "p": p}
            atomic_write(self.kdf_path, json.dumps(kdf).encode())
        else:
            raise MissingResourceError(f"{self.folder} holds no checkpoint (no kdf.json)")
        key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(self._passphrase)
        self._sealer = Sealer(key, self.folder)
        return self._sealer

    def save(
        self, keys: dict[str, Any], state: dict[str, Any], run: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        """Write the checkpoint after a finished step: ``keys`` from ``DataOwner.key_material()``,
        ``state`` from ``DataOwner.checkpoint()``."""
        sealer = self._sealer_for(create=True)
        if not self._keys_written:
            atomic_write(self.keys_path, codec.encode(keys["public"], _KEY_LIMITS))
            self._keys_written = True
        payload = {
            "secret_key": keys["secret_key"],
            **_state_fields(state),
            "run": json.dumps(run, sort_keys=True, default=str),
            "progress": json.dumps(progress, default=str),
        }
        sealer.write(self.state_path, payload, LABEL)

    def load(self) -> Saved:
        """Read and check the checkpoint: the passphrase must open it, the public keys must belong to
        the sealed secret key."""
        if not self.exists():
            raise MissingResourceError(f"{self.folder} holds no checkpoint to resume (no state.sealed)")
        sealer = self._sealer_for(create=False)
        try:
            payload = sealer.read(self.state_path, LABEL)
        except SecurityError as err:
            raise SecurityError(
                f"checkpoint {self.state_path} does not open: wrong {PASSPHRASE_ENV}, or the file was altered"
            ) from err
        if not self.keys_path.is_file():
            raise MissingResourceError(f"checkpoint {self.folder} lacks its public keys (public_keys.bin)")
        public = codec.decode(self.keys_path.read_bytes(), _KEY_LIMITS)
        ctx = CkksContext.from_payload(public)
        sk = SecretKey.from_bytes(ctx.params, payload["secret_key"])
        if sk.context_id != ctx.context_id:
            raise SecurityError(f"{self.keys_path} is not the public half of the sealed secret key")
        state = _state_fields(payload)
        return Saved((ctx, sk), state, json.loads(payload["run"]), json.loads(payload["progress"]))


def _state_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The model owner's part of a checkpoint: a sealed state (end policy ``encrypted``) or the
    adapter ciphertexts and their tag (``export``)."""
    return (
        {"sealed": state["sealed"]}
        if "sealed" in state
        else {"adapter": state["adapter"], "tag": state["tag"]}
    )


def run_checkpoint(folder: str | Path, resume: bool) -> CheckpointDir | None:
    """A run's checkpoint folder: None without the passphrase (no checkpoints; ``resume`` then needs
    it, and says so), else checked by :meth:`CheckpointDir.check_start`."""
    if not (resume or os.environ.get(PASSPHRASE_ENV)):
        return None
    ckpt = CheckpointDir(folder, passphrase_from_env())
    ckpt.check_start(resume)
    return ckpt


def model_owner_state_key(path: str | Path) -> bytes:
    """The model owner's checkpoint-tag key from ``path`` (``serve privtuner-model-owner --state-key``),
    created (32 random bytes, mode 0600) if absent, so that checkpoints outlive a restart. It is the
    model owner's secret: whoever holds it can vouch for any adapter state."""
    p = Path(path)
    if not p.exists():
        atomic_write(p, os.urandom(32))
    key = p.read_bytes()
    if len(key) < 32:
        raise SecurityError(f"state key {p} is shorter than 32 bytes")
    return key


def check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run with other settings (one line naming the first difference)."""
    current = json.loads(json.dumps(current, sort_keys=True, default=str))
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise P3eftError(
                f"the checkpoint is of another run: {key} was {saved.get(key)!r}, now {current.get(key)!r}"
            )
