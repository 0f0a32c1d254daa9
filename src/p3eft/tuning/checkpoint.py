"""Resumable checkpoints: trainable tensors, optimiser, RNG states, step and data position.

Layout under ``<out>/checkpoints/``: one folder ``step-NNNNNNNN`` per saved step and a ``LATEST``
file naming the newest. A folder is written under a temp name and renamed into place, then
``LATEST`` is replaced atomically, so a run killed at any moment leaves either the old or the new
checkpoint, never a half-written one that ``--resume`` would trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
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


class Checkpointer:
    """Saves and restores training state under ``<out_dir>/checkpoints``."""

    def __init__(self, out_dir: str | Path, every: int = 0, keep: int = 2) -> None:
        self.root = Path(out_dir) / "checkpoints"
        self.every = every
        self.keep = max(keep, 1)

    def due(self, step: int, final: bool) -> bool:
        """Save after this (1-based) step count?"""
        return final or (self.every > 0 and step % self.every == 0)

    def exists(self) -> bool:
        return (self.root / "LATEST").is_file()

    def save(
        self,
        step: int,
        params: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        state: Mapping[str, Any],
    ) -> Path:
        """Write checkpoint ``step`` (number of completed steps) atomically and prune old ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in params.items()}, tmp / "trainable.safetensors"
            )
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            rng_t, rng_meta = _rng_state()
            save_file(rng_t, tmp / "rng.safetensors")
            payload = {"step": step, "rng": rng_meta, **state}
            (tmp / "state.json").write_text(json.dumps(payload))
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write_text(self.root / "LATEST", name)
        kept = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in kept[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_latest(
        self, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> dict[str, Any] | None:
        """Restore params, optimiser and RNG from the newest checkpoint; return its state, or None if none."""
        if not self.exists():
            return None
        folder = self.root / (self.root / "LATEST").read_text().strip()
        try:
            tensors = load_file(folder / "trainable.safetensors")
            opt_state = torch.load(folder / "optimizer.pt", weights_only=True)
            rng_t = load_file(folder / "rng.safetensors")
            state = json.loads((folder / "state.json").read_text())
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
