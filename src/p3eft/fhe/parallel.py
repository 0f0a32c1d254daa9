"""Process-pool parallelism for independent ciphertext work.

TenSEAL's SEAL binding holds the GIL during each call, so threads do not overlap SEAL work; processes
do. Each worker rebuilds the public context from its byte payload (keys are public here: no secret
key ever goes to a worker), builds the same kernel from the weights and encodes its diagonals once,
then serves ciphertext bytes in, ciphertext bytes out.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from p3eft.fhe.context import Ciphertext, CkksContext
from p3eft.fhe.linalg import StaggeredMatrix

_WORKER: dict[str, Any] = {}


def _init_worker(payload: dict[str, bytes], weight: np.ndarray) -> None:
    ctx = CkksContext.from_payload(payload)
    mat = StaggeredMatrix(weight, ctx.slots)
    mat.prepare(ctx)
    _WORKER["ctx"], _WORKER["mat"] = ctx, mat


def _run(blocks: list[bytes]) -> tuple[list[bytes], float]:
    ctx: CkksContext = _WORKER["ctx"]
    mat: StaggeredMatrix = _WORKER["mat"]
    cpu0 = time.process_time()
    xs = [ctx.ciphertext_from_bytes(b) for b in blocks]
    out = [ctx.ciphertext_to_bytes(y) for y in mat(ctx, xs)]
    return out, time.process_time() - cpu0


def _ping(_: int) -> bool:
    return "mat" in _WORKER


class MatvecPool:
    """A pool of ``workers`` processes applying one plaintext matrix to many encrypted vectors."""

    def __init__(self, ctx: CkksContext, weight: np.ndarray, workers: int = 2) -> None:
        self.ctx = ctx
        self.workers = workers
        self.last_worker_cpu_s = 0.0  # CPU seconds the workers spent in the last map (diagnostics)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context(method),
            initializer=_init_worker,
            initargs=(ctx.to_payload(), np.asarray(weight, dtype=np.float64)),
        )

    def warm_up(self) -> None:
        """Start every worker and let it encode the weights, so later timings measure products only."""
        assert all(self._pool.map(_ping, range(self.workers * 2)))

    def map(self, inputs: list[list[Ciphertext]]) -> list[list[Ciphertext]]:
        """Apply the matrix to each input (a list of column-block ciphertexts); order is kept."""
        jobs = [[self.ctx.ciphertext_to_bytes(c) for c in blocks] for blocks in inputs]
        results = list(self._pool.map(_run, jobs))
        self.last_worker_cpu_s = sum(cpu for _, cpu in results)
        return [[self.ctx.ciphertext_from_bytes(b) for b in out] for out, _ in results]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MatvecPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
