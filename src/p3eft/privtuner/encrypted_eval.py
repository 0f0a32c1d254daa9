"""Phase 3 of the SST-2 experiment (ours): encrypted inference of dev sentences with the adapter
that phase 2 trained under encryption, in this process or in several.

One encrypted inference of minilm-l6 (2 layers) takes a minute or more of one core, so 200 of them
are hours; they are independent of each other, so they can run side by side. With ``procs`` > 1,
each process is a data owner restored from the run's sealed checkpoint
(:mod:`p3eft.privtuner.checkpoint`) with its own in-process model owner: the same keys, the same
encrypted adapter (which that model owner checks it signed), a session of its own. Processes are
spawned, not forked (the parent holds torch and SEAL state), and take sentences from one queue, so
a slow one does not hold the rest back. The parent gets back what the data owner is entitled to:
the decrypted logits of each sentence, its costs, and (export policy, once) the decrypted adapter.

:func:`in_index_order` hands the results on in dev-set order, whatever order they arrive in, so the
experiment's JSON always holds a prefix of the dev set and ``--resume`` goes on after it (a crash
loses at most the sentences in flight).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.privtuner import accounting
from p3eft.privtuner.config import PrivTunerConfig

MAX_PROCS = 16
POLL_S = 5.0  # how often the parent looks for a child that died without a word


@dataclass(frozen=True)
class EvalRecord:
    """One dev sentence's encrypted inference, as its data owner saw it."""

    index: int  # position in the dev set
    logits: list[float]  # decrypted by the data owner
    costs: dict[str, Any]  # the ledger's difference over this inference (both parties' work)
    seconds: float  # wall seconds of the inference in its process


@dataclass(frozen=True)
class Adapter:
    """The decrypted adapter and head (export policy), peft-named, sent once by the first process."""

    named: dict[str, np.ndarray]


def infer(do: Any, index: int, text: str) -> EvalRecord:
    """One encrypted inference by data owner ``do`` (a :class:`~p3eft.privtuner.roles.DataOwner`)."""
    before = do.ledger.snapshot()
    t0 = time.perf_counter()
    z = do.logits(text)
    costs = accounting.diff(do.ledger.snapshot(), before)
    costs.pop("per_method", None)  # cumulative per method, not this inference's
    return EvalRecord(index, np.asarray(z, dtype=float).tolist(), costs, time.perf_counter() - t0)


def in_this_process(do: Any, todo: Iterable[tuple[int, str]]) -> Iterator[Adapter | EvalRecord]:
    """Phase 3 with the run's own data owner: its adapter, then each sentence in turn."""
    yield Adapter(do.decrypt_adapter())
    for index, text in todo:
        yield infer(do, index, text)


def in_process_data_owner(
    cfg: PrivTunerConfig, backend: Any, state_key: bytes | None, workers: int = 1, saved: Any = None
) -> Any:
    """A data owner with its own in-process model owner (a pool of ``workers``, checkpoint tags under
    ``state_key``): new keys and a new adapter, or, given ``saved`` (a loaded checkpoint), its keys and
    the adapter it holds, which that model owner checks it signed."""
    from p3eft.channel import InProcessChannel
    from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner
    from p3eft.privtuner.wiring import BertCodec

    do = DataOwner(
        InProcessChannel(ModelOwner(backend, state_key=state_key, workers=workers)),
        BertCodec,
        DataOwnerConfig(lr=cfg.lr, seed=cfg.seed),
        keys=None if saved is None else saved.keys,
    )
    if saved is not None:
        do.restore(saved.state)
    return do


def restored_data_owner(cfg: PrivTunerConfig, backend: Any, checkpoint: Any, workers: int = 1) -> Any:
    """:func:`in_process_data_owner` continuing from ``checkpoint`` (a
    :class:`~p3eft.privtuner.checkpoint.CheckpointDir`): the kept keys and the signed adapter."""
    return in_process_data_owner(cfg, backend, checkpoint.in_process_state_key(), workers, checkpoint.load())


def _child(
    cfg: PrivTunerConfig,
    folder: str,
    data_dir: str | None,
    send_adapter: bool,
    tasks: Any,
    results: Any,
) -> None:
    """A spawned process: restore, then infer sentences from ``tasks`` until its ``None``; it exits
    when its parent is gone (no orphan goes on computing for nobody)."""
    from p3eft.fhe.parallel import start_parent_watch

    start_parent_watch()
    try:
        from p3eft.privtuner.checkpoint import CheckpointDir, passphrase_from_env
        from p3eft.privtuner.wiring import BertBackend

        backend = BertBackend(cfg, data_dir)
        do = restored_data_owner(cfg, backend, CheckpointDir(folder, passphrase_from_env()))
        try:
            if send_adapter:
                results.put(Adapter(do.decrypt_adapter()))
            while (task := tasks.get()) is not None:
                results.put(infer(do, *task))
        finally:
            do.close()
        results.put(None)
    except BaseException as err:  # the parent reports it; a traceback here would be lost
        results.put(P3eftError(f"phase 3 process: {type(err).__name__}: {str(err)[:500]}"))


def in_processes(
    cfg: PrivTunerConfig,
    checkpoint_folder: str | Path,
    todo: list[tuple[int, str]],
    procs: int,
    data_dir: str | Path | None = None,
) -> Iterator[Adapter | EvalRecord]:
    """Phase 3 across ``procs`` spawned processes restored from the sealed checkpoint in
    ``checkpoint_folder`` (the passphrase comes from the environment, which they inherit). Yields the
    adapter once, then records as they finish (any order: see :func:`in_index_order`). A process that
    fails or dies stops all of them with an error."""
    if not 1 <= procs <= MAX_PROCS:
        raise P3eftError(f"phase 3 processes must be from 1 to {MAX_PROCS}, got {procs}")
    procs = max(1, min(procs, len(todo)))
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for task in todo:
        tasks.put(task)
    for _ in range(procs):
        tasks.put(None)
    args = (cfg, str(checkpoint_folder), None if data_dir is None else str(data_dir))
    children = [
        ctx.Process(target=_child, args=(*args, k == 0, tasks, results), daemon=True) for k in range(procs)
    ]
    for child in children:
        child.start()
    finished = 0
    try:
        while finished < procs:
            try:
                item = results.get(timeout=POLL_S)
            except queue_mod.Empty:
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise P3eftError(
                        f"a phase 3 process died (exit code {dead[0].exitcode}; killed for memory?)"
                    ) from None
                continue
            if item is None:
                finished += 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(timeout=30)


def in_index_order(items: Iterable[Adapter | EvalRecord], first: int) -> Iterator[Adapter | EvalRecord]:
    """``items`` with the records put in order of index from ``first`` on (each held back until those
    before it have come); the adapter passes at once. Records after a gap that never closes are
    dropped at the end: the caller's prefix stays whole."""
    held: dict[int, EvalRecord] = {}
    nxt = first
    for item in items:
        if isinstance(item, Adapter):
            yield item
            continue
        held[item.index] = item
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1


def summary_costs(costs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean per-inference costs over phase 3's records (both parties, per direction)."""
    keys: tuple[str, ...] = (
        "server_cpu_s",
        "server_wall_s",
        "device_cpu_s",
        "bytes_up",
        "bytes_down",
        "refresh_round_trips",
    )
    return {k: float(np.mean([c.get(k, 0.0) for c in costs])) for k in keys} if costs else {}


def export_once(
    folder: Path, named: dict[str, np.ndarray], cfg: PrivTunerConfig, meta: dict[str, Any]
) -> Path:
    """The encrypted run's adapter, decrypted by its data owner, as a PEFT folder (kept if it exists,
    so every session of a resumed run evaluates and records the same adapter)."""
    from p3eft.privtuner.export import export_adapter
    from p3eft.privtuner.wiring import export_base

    if (folder / "adapter_config.json").is_file():
        return folder
    return export_adapter(export_base(cfg), named, folder, cfg.lora_rank, cfg.lora_alpha, meta)
