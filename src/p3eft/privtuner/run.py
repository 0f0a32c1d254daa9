"""Running PrivTuner as a data owner: open the parties, train, evaluate (what the CLI calls).

Everything here is the data owner's loop around :class:`~p3eft.privtuner.roles.DataOwner`; the model
owner is either in this process (:class:`~p3eft.channel.InProcessChannel`, the default) or a server
reached over mutual TLS (:func:`p3eft.privtuner.net.connect_model_owner`). The numbers do not depend
on which: the same messages cross (the protocol tests check it).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.channel import Channel, InProcessChannel
from p3eft.errors import P3eftError
from p3eft.fhe.context import CkksContext, SecretKey
from p3eft.privtuner import accounting
from p3eft.privtuner.audit import AuditingChannel
from p3eft.privtuner.contract import ClientCodec, ModelBackend
from p3eft.privtuner.protocol import EndPolicy
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner

Progress = Callable[[int, int, str], None]  # (done, total, message)


@contextmanager
def data_owner(
    codec_factory: Callable[[dict[str, Any]], ClientCodec],
    config: DataOwnerConfig,
    backend: ModelBackend | None = None,
    server: str | None = None,
    certs: str | Path | None = None,
    audit: bool = False,
    keys: tuple[CkksContext, SecretKey] | None = None,
    state_key: bytes | None = None,
    end_policy: EndPolicy = EndPolicy.EXPORT,
) -> Iterator[tuple[DataOwner, AuditingChannel | None]]:
    """A data owner connected to an in-process model owner (``backend``) or to ``server`` (HOST:PORT).

    ``audit`` runs the transcript audit online (:class:`~p3eft.privtuner.audit.AuditingChannel`);
    ``keys`` reuses a checkpoint's keys instead of generating new ones; ``state_key`` is the
    in-process model owner's checkpoint-tag key (kept by the caller, so that a restarted process
    accepts its checkpoints); ``end_policy`` is the in-process model owner's (a server has its own:
    the data owner reads it from the session setup, ``do.setup.end_policy``).
    """
    channel: Channel
    if server is not None:
        if certs is None:
            raise P3eftError("--server needs --certs (the folder from `p3eft keys init`)")
        from p3eft.privtuner.net import connect_model_owner

        channel = connect_model_owner(server, certs)
    elif backend is not None:
        channel = InProcessChannel(ModelOwner(backend, state_key=state_key, end_policy=end_policy))
    else:
        raise P3eftError("no model owner: give a model (in process) or --server HOST:PORT")
    aud = AuditingChannel(channel) if audit else None
    if audit:
        config = DataOwnerConfig(**{**config.__dict__, "record_decryptions": True})
    do = DataOwner(aud or channel, codec_factory, config, keys=keys)
    if aud is not None:
        aud.bind(do.decryptions)
    try:
        yield do, aud
    finally:
        do.close()


@dataclass
class TrainRecord:
    """Per-step losses and costs of a training run (JSON-ready)."""

    losses: list[float] = field(default_factory=list)
    step_costs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "step_costs": self.step_costs, "seconds": self.seconds}


def batches(
    examples: list[tuple[str, int]], batch_size: int, epochs: int, seed: int
) -> list[list[tuple[int, tuple[str, int]]]]:
    """Seeded shuffled batches of (index, example) for ``epochs`` passes (the twin uses the same order)."""
    if batch_size < 1 or epochs < 1:
        raise P3eftError("--batch-size and --epochs must be at least 1")
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            out.append([(j, examples[j]) for j in order[i : i + batch_size]])
    return out


def train(
    do: DataOwner,
    plan: list[list[tuple[int, tuple[str, int]]]],
    progress: Progress | None = None,
    record: TrainRecord | None = None,
    after_step: Callable[[TrainRecord], None] | None = None,
) -> TrainRecord:
    """Run the planned steps; the example index is the frozen-layer cache key. ``record`` holds the
    steps already done (a resumed run continues after them); ``after_step`` sees the record after
    every step (the checkpoint's hook)."""
    rec = record if record is not None else TrainRecord()
    for step in range(len(rec.losses), len(plan)):
        batch = plan[step]
        t0 = time.perf_counter()
        before = do.ledger.snapshot()
        loss = do.train_step([ex for _, ex in batch], keys=[f"train-{i}" for i, _ in batch])
        rec.losses.append(loss)
        rec.step_costs.append(accounting.diff(do.ledger.snapshot(), before))
        rec.seconds += time.perf_counter() - t0
        if after_step:
            after_step(rec)
        if progress:
            progress(step + 1, len(plan), f"loss {loss:.4f}")
    return rec


def evaluate(
    do: DataOwner, examples: list[tuple[str, int]], progress: Progress | None = None
) -> dict[str, Any]:
    """Encrypted inference with the session's (still encrypted) adapter; the data owner scores locally."""
    logits, preds = [], []
    t0 = time.perf_counter()
    for i, (text, _) in enumerate(examples):
        z = do.logits(text)
        logits.append([float(v) for v in z])
        preds.append(int(np.argmax(z)))
        if progress:
            progress(i + 1, len(examples), "")
    labels = [lab for _, lab in examples]
    correct = sum(int(p == y) for p, y in zip(preds, labels, strict=True))
    return {
        "examples": len(examples),
        "accuracy": correct / len(examples) if examples else math.nan,
        "predictions": preds,
        "logits": logits,
        "seconds": time.perf_counter() - t0,
    }
