"""Process-pool parallelism for ciphertext work (ours).

TenSEAL's SEAL binding holds the GIL during each call, so threads do not overlap SEAL work; processes
do. Each worker rebuilds the public context from its byte payload (keys are public here: no secret
key ever goes to a worker), builds the kernels it is asked for from their weights, and serves
ciphertext bytes in, ciphertext bytes out.

* :class:`MatvecPool`: one plaintext matrix applied to many independent encrypted vectors.
* :class:`KernelPool`: any diagonal kernel's products, each cut into ranges of its giant steps
  (:meth:`~p3eft.fhe.linalg._DiagonalKernel.giant_sum`); the parent adds the ranges up and rescales.
  The sums are exact modular additions of the same giant-step terms, so a pooled product is the very
  ciphertext a one-process product gives, bit for bit (tested). What it cannot split: the baby-step
  rotations, which every worker on a product recomputes (they need the input alone).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from p3eft.errors import P3eftError
from p3eft.fhe import serial
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.linalg import StaggeredMatrix, _DiagonalKernel

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


# ----- KernelPool ------------------------------------------------------------------------------------

# kernels a worker keeps built (LRU): MiniLM's largest hold 384 diagonals of 8192 slots (25 MB)
WORKER_KERNELS = 64
_KWORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class KernelRecipe:
    """How a worker builds a kernel: a picklable factory and its arguments, named by a digest of
    them (the worker's cache key; weights are compared by content, never by name)."""

    factory: Callable[..., _DiagonalKernel]
    args: tuple[Any, ...]
    digest: str = field(default="", compare=False)

    @classmethod
    def of(cls, factory: Callable[..., _DiagonalKernel], *args: Any) -> KernelRecipe:
        h = hashlib.sha256(f"{factory.__module__}.{factory.__qualname__}".encode())
        for a in args:
            if isinstance(a, np.ndarray):
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            else:
                h.update(repr(a).encode())
        return cls(factory, args, h.hexdigest())


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def start_parent_watch() -> None:
    """Exit this process when the one that started it is gone (a killed model owner leaves no
    workers behind). A watch thread, not PR_SET_PDEATHSIG: that signal follows the *thread* that
    started the child, and a model owner starts its pools from short-lived request threads."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()


def _init_kernel_worker(payload_file: str) -> None:
    start_parent_watch()
    with open(payload_file, "rb") as f:  # written by this worker's parent into its own 0700 folder
        payload = pickle.load(f)
    _KWORKER["ctx"] = CkksContext.from_payload(payload, keep_key_bytes=False)
    _KWORKER["kernels"] = OrderedDict()
    Path(payload_file).with_name(f"ready-{os.getpid()}").touch()


def _worker_kernel(recipe: KernelRecipe) -> _DiagonalKernel:
    cache: OrderedDict[str, _DiagonalKernel] = _KWORKER["kernels"]
    k = cache.get(recipe.digest)
    if k is None:
        k = recipe.factory(*recipe.args)
        cache[recipe.digest] = k
        while len(cache) > WORKER_KERNELS:
            cache.popitem(last=False)
    else:
        cache.move_to_end(recipe.digest)
    return k


def _giant_job(
    recipe: KernelRecipe, inputs: list[bytes], lvl: int, block: int, giants: tuple[int, int]
) -> tuple[bytes | None, float]:
    cpu0 = time.process_time()
    ctx: CkksContext = _KWORKER["ctx"]
    kernel = _worker_kernel(recipe)
    xs = [serial.seal_from_bytes(sealapi.Ciphertext(ctx.seal), ctx.seal, b, "ciphertext") for b in inputs]
    total = kernel.giant_sum(ctx, kernel.baby_steps(ctx, xs), lvl, block, range(*giants))
    out = None if total is None else serial.seal_to_bytes(total)
    return out, time.process_time() - cpu0


def _kernel_worker_ready(folder: str, workers: int, timeout_s: float = 300.0) -> None:
    """Return once every worker has loaded the keys (each leaves a marker), so that the parent can
    delete the key file; holding the warm-up jobs until then keeps the first worker from taking them
    all before the others have started."""
    t0 = time.monotonic()
    while len(list(Path(folder).glob("ready-*"))) < workers and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)


def giant_ranges(giant: int, parts: int) -> list[tuple[int, int]]:
    """``range(giant)`` cut into at most ``parts`` contiguous, near-equal, non-empty ranges."""
    parts = max(1, min(parts, giant))
    cuts = [round(i * giant / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


@dataclass
class Product:
    """One pending kernel product: the kernel, its recipe, its input blocks and output blocks."""

    kernel: _DiagonalKernel
    recipe: KernelRecipe
    xs: list[Ciphertext]
    out_blocks: int
    layout: Layout
    sum_copies: tuple[int, int] | None = None


class KernelPool:
    """``workers`` processes that compute ranges of kernels' giant steps for one set of public keys.

    Built from the key payload the data owner uploaded (public keys only; the file the workers load
    it from is deleted once they have). CPU the workers spend is added up in :attr:`worker_cpu_s`,
    so the model owner's accounting can include it. A worker that dies makes the pool unusable: the
    next product raises :class:`~p3eft.errors.P3eftError` instead of hanging.
    """

    def __init__(self, payload: dict[str, bytes], workers: int = 2) -> None:
        if not isinstance(workers, int) or workers < 2:
            raise P3eftError(f"a kernel pool needs at least 2 workers, got {workers!r}")
        self.workers = workers
        self.worker_cpu_s = 0.0
        self._lock = threading.Lock()
        folder = tempfile.mkdtemp(prefix="p3eft-pool-")
        try:
            path = Path(folder) / "keys"
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                pickle.dump(dict(payload), f, protocol=pickle.HIGHEST_PROTOCOL)
            # spawn, not fork: a model owner that serves gRPC must not fork (grpc/grpc#43055)
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_kernel_worker,
                initargs=(str(path),),
            )
            list(self._pool.map(_kernel_worker_ready, [folder] * workers, [workers] * workers))
            started = len(list(Path(folder).glob("ready-*")))
            if started != workers:
                self._pool.shutdown(wait=False, cancel_futures=True)
                raise P3eftError(f"kernel pool: {started} of {workers} workers started")
        except BrokenProcessPool as err:
            raise P3eftError(f"kernel pool: a worker failed to start ({err})") from err
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def products(self, ctx: CkksContext, items: Sequence[Product]) -> list[list[Ciphertext]]:
        """Every item's output blocks; the items' giant ranges run side by side on the workers."""
        parts = max(1, self.workers // max(1, sum(it.out_blocks for it in items)))
        pending = []  # per item: its inputs' level and scale, and per output block the ranges' futures
        for it in items:
            xs, lvl, scale = it.kernel._inputs(ctx, it.xs)
            blobs = [serial.seal_to_bytes(x.seal) for x in xs]
            blocks = [
                [
                    self._submit(_giant_job, it.recipe, blobs, lvl, block, rng)
                    for rng in giant_ranges(it.kernel.giant, parts)
                ]
                for block in range(it.out_blocks)
            ]
            pending.append((xs[0], lvl, scale, blocks))
        return [
            [
                it.kernel._finish(ctx, self._sum(ctx, futures), x, lvl, scale, it.layout, it.sum_copies)
                for futures in blocks
            ]
            for it, (x, lvl, scale, blocks) in zip(items, pending, strict=True)
        ]

    def _sum(self, ctx: CkksContext, futures: list[Any]) -> Any | None:
        """The sum of one output block's ranges (None when every range was all-zero diagonals)."""
        total = None
        for part in self._results(futures):
            if part is None:
                continue
            ct = serial.seal_from_bytes(sealapi.Ciphertext(ctx.seal), ctx.seal, part, "ciphertext")
            if total is None:
                total = ct
            else:
                ctx.evaluator.add_inplace(total, ct)
        return total

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError) as err:
            raise P3eftError(f"kernel pool is not usable: {err}") from err

    def _results(self, futures: list[Any]) -> list[bytes | None]:
        out = []
        try:
            for f in futures:
                blob, cpu = f.result()
                with self._lock:
                    self.worker_cpu_s += cpu
                out.append(blob)
        except BrokenProcessPool as err:
            raise P3eftError(f"a kernel pool worker died: {err}") from err
        return out

    def close(self, wait: bool = True) -> None:
        """Stop the workers (``wait=False``: return at once, they exit after their current job)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (diagnostics and tests)."""
        return sorted(self._pool._processes or {})

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
