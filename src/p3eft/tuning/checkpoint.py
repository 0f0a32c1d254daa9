"""Resumable checkpoints for every scheme: one layout, atomic writes, loading that runs no code.

Layout under ``<out>/checkpoints/``: one folder ``step-NNNNNNNN`` per saved step and a ``LATEST``
file naming the newest. A folder is written under a temp name and renamed into place, then
``LATEST`` is replaced atomically, so a run killed at any moment leaves either the old or the new
checkpoint, never a half-written one that ``--resume`` would trust (:class:`CheckpointStore`).

What goes inside is safe to load from an untrusted folder: tensors as safetensors, optimiser state
through ``torch.load(weights_only=True)``, everything else as JSON or raw bytes; this module unpickles
nothing.
The plain reference stores trainables, AdamW state, RNG states, step and data position
(:class:`Checkpointer`); ObfuscaTune stores the enclave's sealed state as bytes
(:func:`save_state_files` / :func:`load_state_files`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from p3eft.errors import P3eftError


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


STEP_PREFIX = "step-"


class CheckpointStore:
    """Numbered checkpoint folders under ``<out_dir>/checkpoints``, written atomically, plus ``LATEST``."""

    def __init__(self, out_dir: str | Path, keep: int = 2) -> None:
        self.root = Path(out_dir) / "checkpoints"
        self.keep = max(keep, 1)

    def exists(self) -> bool:
        return (self.root / "LATEST").is_file()

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        if not self.exists():
            return None
        folder = self.root / (self.root / "LATEST").read_text().strip()
        if not folder.is_dir():
            raise P3eftError(f"{self.root}/LATEST names {folder.name}, which is missing; use another --out")
        return folder

    @staticmethod
    def step_of(folder: Path) -> int:
        return int(folder.name.removeprefix(STEP_PREFIX))

    def write(self, step: int, fill: Callable[[Path], None]) -> Path:
        """Let ``fill`` write checkpoint ``step`` into a temp folder, publish it, then prune old ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{STEP_PREFIX}{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            fill(tmp)
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write_text(self.root / "LATEST", name)
        kept = sorted(p for p in self.root.glob(f"{STEP_PREFIX}*") if p.is_dir())
        for old in kept[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


STATE_JSON = "state.json"


def save_state_files(folder: Path, state: Mapping[str, Any]) -> None:
    """Write a state mapping as files: each ``bytes`` value as ``<key>.bin``, the rest as JSON."""
    meta = {}
    for key, value in state.items():
        if isinstance(value, bytes | bytearray):
            (folder / f"{key}.bin").write_bytes(bytes(value))
        else:
            meta[key] = value
    meta["_bytes"] = sorted(k for k, v in state.items() if isinstance(v, bytes | bytearray))
    (folder / STATE_JSON).write_text(json.dumps(meta))


def load_state_files(folder: Path) -> dict[str, Any]:
    """The mapping :func:`save_state_files` wrote; reads only JSON and raw bytes (no code runs)."""
    try:
        meta = json.loads((folder / STATE_JSON).read_text())
        names = meta.pop("_bytes")
        return {**meta, **{k: (folder / f"{Path(k).name}.bin").read_bytes() for k in names}}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise P3eftError(
            f"checkpoint {folder} is unreadable ({type(err).__name__}); remove it or use another --out"
        ) from None


class Checkpointer:
    """Saves and restores a training loop's state (trainables, optimiser, RNG) in a :class:`CheckpointStore`."""

    def __init__(self, out_dir: str | Path, every: int = 0, keep: int = 2) -> None:
        self.store = CheckpointStore(out_dir, keep)
        self.root = self.store.root
        self.every = every

    def due(self, step: int, final: bool) -> bool:
        """Save after this (1-based) step count?"""
        return final or (self.every > 0 and step % self.every == 0)

    def exists(self) -> bool:
        return self.store.exists()

    def save(
        self,
        step: int,
        params: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        state: Mapping[str, Any],
    ) -> Path:
        """Write checkpoint ``step`` (number of completed steps) atomically and prune old ones."""

        def fill(tmp: Path) -> None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in params.items()}, tmp / "trainable.safetensors"
            )
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            rng_t, rng_meta = _rng_state()
            save_file(rng_t, tmp / "rng.safetensors")
            (tmp / STATE_JSON).write_text(json.dumps({"step": step, "rng": rng_meta, **state}))

        return self.store.write(step, fill)

    def load_latest(
        self, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> dict[str, Any] | None:
        """Restore params, optimiser and RNG from the newest checkpoint; return its state, or None if none."""
        folder = self.store.latest()
        if folder is None:
            return None
        try:
            tensors = load_file(folder / "trainable.safetensors")
            opt_state = torch.load(folder / "optimizer.pt", weights_only=True)
            rng_t = load_file(folder / "rng.safetensors")
            state = json.loads((folder / STATE_JSON).read_text())
        except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
            raise P3eftError(
                f"checkpoint {folder} is unreadable ({type(err).__name__}); remove it or use another --out"
            ) from None
        missing = set(params) - set(tensors)
        if missing:
            raise P3eftError(
                f"checkpoint {folder} does not match this model: {len(missing)} trainable tensors missing"
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[k].to(p.device, p.dtype))
        optimizer.load_state_dict(opt_state)
        _set_rng_state(rng_t, state.pop("rng"))
        return state
