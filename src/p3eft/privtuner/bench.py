"""What one encrypted PrivTuner step and one encrypted inference cost, per parameter set (ours).

For each parameter set a fresh model owner and data owner run, in one process, through the real
protocol (:mod:`p3eft.privtuner.roles`): key generation and upload once, then ``repeats`` training steps
of ONE example (forward, local loss, encrypted backward, homomorphic update) and ``repeats`` encrypted
inferences. Each party's figures come from the :class:`~p3eft.privtuner.accounting.Ledger`: its own
CPU and wall time, bytes each way as they would be on the wire, refresh round trips, encryptions and
decryptions. Medians over the repeats are written as the step-cost file that ``p3eft wireless run
--costs FILE`` reads (format: ``kind = p3eft.privtuner.step_costs``, version 1).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from p3eft.channel import InProcessChannel
from p3eft.privtuner import accounting
from p3eft.privtuner.contract import ClientCodec, ModelBackend
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner

KIND = "p3eft.privtuner.step_costs"
VERSION = 1
COST_KEYS = (
    "device_cpu_s",
    "device_wall_s",
    "server_cpu_s",
    "server_wall_s",
    "bytes_up",
    "bytes_down",
    "refresh_round_trips",
    "encryptions",
    "decryptions",
)


@dataclass(frozen=True)
class BenchCase:
    """One parameter set's run: the backend (model owner), the data owner's codec factory, and the
    model owner's kernel-pool processes per session (1: none)."""

    name: str
    backend: ModelBackend
    codec_factory: Callable[[dict[str, Any]], ClientCodec]
    workers: int = 1


def _median_costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in COST_KEYS:
        vals = [r[k] for r in rows]
        med = statistics.median(vals)
        out[k] = int(round(med)) if isinstance(vals[0], int) else float(med)
    levels = [r.get("min_level") for r in rows if r.get("min_level") is not None]
    out["min_level"] = min(levels) if levels else None
    secs = [r.get("server_breakdown", {}).get("seconds", {}) for r in rows]
    if any(secs):  # where the model owner's time goes (median per kind of work)
        kinds = sorted({k for s in secs for k in s})
        out["server_seconds_by_kind"] = {
            k: float(statistics.median([s.get(k, 0.0) for s in secs])) for k in kinds
        }
    return out


def measure_case(
    case: BenchCase,
    examples: list[tuple[str, int]],
    repeats: int,
    lr: float = 1e-2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Key generation, ``repeats`` one-example training steps and inferences for one parameter set."""
    say = progress or (lambda _msg: None)
    mo = ModelOwner(case.backend, workers=case.workers)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # the bench never checkpoints, so its data owner need not keep its uploaded key bytes (both
    # parties share this process: at PT32768 that copy is 4.8 GB of the machine's memory)
    do = DataOwner(InProcessChannel(mo), case.codec_factory, DataOwnerConfig(lr=lr, keep_key_bytes=False))
    setup_cpu, setup_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    keygen_cpu = do.ledger.device_cpu_s
    train, infer = [], []
    try:
        for i in range(repeats):
            text, label = examples[i % len(examples)]
            say(f"{case.name}: training step {i + 1}/{repeats}")
            before = do.ledger.snapshot()
            do.train_step([(text, label)])
            train.append(accounting.diff(do.ledger.snapshot(), before))
            say(f"{case.name}: inference {i + 1}/{repeats}")
            before = do.ledger.snapshot()
            do.logits(text)
            infer.append(accounting.diff(do.ledger.snapshot(), before))
    finally:
        do.close()
    params = case.backend.params
    return {
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_modulus_bits": list(params.coeff_mod_bit_sizes),
        "log_q": params.total_bits,
        "security_bits": params.security_bits,
        "workers": case.workers,
        "per_example": _median_costs(train),
        "inference_per_example": _median_costs(infer),
        "key_upload_bytes": do.key_upload_bytes,
        "galois_keys": len(do.ctx.galois_steps),
        "rotation_keys": getattr(getattr(case.backend, "cfg", None), "rotation_keys", "exact"),
        "keygen_cpu_s": keygen_cpu,
        "session_setup_cpu_s": setup_cpu,
        "session_setup_wall_s": setup_wall,
        "repeats": repeats,
        "per_step": train,
        "per_inference": infer,
        # this process's resident high-water mark so far (Linux ru_maxrss): both parties, and any
        # parameter set measured before this one in the same process; not the pool's workers
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def step_cost_file(
    cases: Iterable[BenchCase],
    model: dict[str, Any],
    examples: list[tuple[str, int]],
    repeats: int,
    command: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The step-cost JSON object for every case (the contract of ``p3eft wireless run --costs``)."""
    from p3eft.fhe.costs import machine_info

    load0 = os.getloadavg()
    sets = {c.name: measure_case(c, examples, repeats, progress=progress) for c in cases}
    return {
        "kind": KIND,
        "version": VERSION,
        "provenance": {
            "command": command,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "repeats": repeats,
            "load_avg": [list(load0), list(os.getloadavg())],
            "note": "CPU seconds are each party's own thread CPU time (the basis for cycles); wall seconds "
            "include waiting for a core on a shared machine; bytes are payload bytes as encoded on the wire",
        },
        "model": model,
        "param_sets": sets,
    }


def table(costs: dict[str, Any]) -> str:
    """A fixed-width table of a step-cost object (what the benchmark prints)."""
    head = (
        f"{'param set':<14}{'workers':>8}  {'what':<10}{'dev cpu s':>10}{'srv cpu s':>10}{'srv wall s':>11}"
        f"{'MB up':>9}{'MB down':>9}{'refresh':>8}{'enc':>6}{'dec':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, ps in costs["param_sets"].items():
        for what, key in (("train", "per_example"), ("infer", "inference_per_example")):
            c = ps[key]
            lines.append(
                f"{name:<14}{ps.get('workers', 1):>8}  {what:<10}{c['device_cpu_s']:>10.2f}{c['server_cpu_s']:>10.2f}"
                f"{c['server_wall_s']:>11.2f}{c['bytes_up'] / 1e6:>9.2f}{c['bytes_down'] / 1e6:>9.2f}"
                f"{c['refresh_round_trips']:>8d}{c['encryptions']:>6d}{c['decryptions']:>6d}"
            )
    return "\n".join(lines)
