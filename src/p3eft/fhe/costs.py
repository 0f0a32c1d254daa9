"""Measured costs of each parameter set: the numbers the wireless optimiser consumes.

Everything here is measured on the machine that runs it (one thread, median of ``repeats``); nothing
is estimated. The JSON schema (``fhe_costs.json``) keeps the keys the optimiser reads:
``poly_modulus_degree``, ``security_bits``, ``coeff_mod_bit_sizes``, ``slots``, the byte sizes and the
per-ciphertext times, plus the matrix-product times (ours and TenSEAL's ``CKKSVector.mm``).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from p3eft.fhe import tensor
from p3eft.fhe.context import Layout, keygen
from p3eft.fhe.linalg import BatchMatrix, StaggeredMatrix, staggered_steps
from p3eft.fhe.params import ParamSet, get_param_set
from p3eft.fhe.refresh import DEFAULT_LAMBDA


@dataclass
class Timing:
    """Median wall-clock and CPU seconds over repeats. On a shared machine the wall time includes
    waiting for a core; the CPU time of this single-threaded work does not, so it is the better
    estimate of cycles (cycles ~ cpu_s x clock)."""

    wall_s: float
    cpu_s: float
    min_wall_s: float
    runs: int


def _timing(fn: Callable[[], Any], repeats: int) -> Timing:
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(statistics.median(walls), statistics.median(cpus), min(walls), len(walls))


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    return _timing(fn, repeats).wall_s


def machine_info() -> dict[str, Any]:
    """CPU model, cores and clock; the clock is the kernel's current reading (``cpu MHz``), not nominal."""
    model, mhz = platform.processor() or "unknown", None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cpu_hz": mhz * 1e6 if mhz else None,
        "cpu_hz_source": "measured by the kernel (/proc/cpuinfo 'cpu MHz' at run time)"
        if mhz
        else "unavailable",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def provenance(command: str, repeats: int) -> dict[str, Any]:
    import tenseal

    return {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "tenseal": tenseal.__version__,
        "threads": 1,
        "repeats": repeats,
        "load_average_1min_at_start": os.getloadavg()[0],
        "note": "times are medians over `repeats` runs, one thread; wall clock (*_s) and process CPU time "
        "(*_cpu_s); the machine may be shared (see the load averages)",
    }


def tenseal_mm(
    params: ParamSet, xs: np.ndarray, weight_in_out: np.ndarray, repeats: int = 1
) -> dict[str, Any]:
    """TenSEAL's built-in ``CKKSVector.mm`` (x^T W, W of shape n_in x n_out) on one thread, for each
    row of ``xs`` in turn (a batch is a sequence of calls: the built-in takes one vector)."""
    import tenseal as ts

    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        n_threads=1,
    )
    ctx.global_scale = params.scale
    ctx.generate_galois_keys()
    rows = np.atleast_2d(xs)
    vecs = [ts.ckks_vector(ctx, r.tolist()) for r in rows]
    w_list = weight_in_out.tolist()
    out: list = []
    tm = _timing(lambda: out.append([v.mm(w_list) for v in vecs]), repeats)
    got = np.array([r.decrypt() for r in out[-1]])
    return {
        "seconds": tm.wall_s,
        "cpu_seconds": tm.cpu_s,
        "runs": tm.runs,
        "max_abs_error": float(np.abs(got - rows @ weight_in_out).max()),
    }


def tenseal_mm_time(params: ParamSet, x: np.ndarray, weight_in_out: np.ndarray, repeats: int = 1) -> float:
    return tenseal_mm(params, x, weight_in_out, repeats)["seconds"]


def parallel_speedup(
    params: ParamSet, n: int = 768, jobs: int = 8, workers: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Wall time of ``jobs`` independent n x n products in one process vs a pool of ``workers``
    (pool started and weights encoded before timing; ciphertext (de)serialisation included)."""
    from p3eft.fhe.parallel import MatvecPool

    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n, n)) / np.sqrt(n)
    mat = StaggeredMatrix(weight, params.slots)
    ctx, sk = keygen(params, mat.galois_steps())
    mat.prepare(ctx)
    xs = rng.uniform(-1, 1, (jobs, n))
    inputs = [
        [
            tensor.encrypt(ctx, xb, lay)
            for xb, lay in zip(mat.split_input(x), mat.input_layouts(), strict=True)
        ]
        for x in xs
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    for blocks in inputs:
        mat(ctx, blocks)
    one, one_cpu = time.perf_counter() - t0, time.process_time() - c0
    with MatvecPool(ctx, weight, workers) as pool:
        pool.warm_up()
        t0 = time.perf_counter()
        outs = pool.map(inputs)
        many = time.perf_counter() - t0
        worker_cpu = pool.last_worker_cpu_s
    err = max(
        float(np.abs(tensor.decrypt(sk, ctx, o[0]) - weight @ x).max()) for o, x in zip(outs, xs, strict=True)
    )
    return {
        "jobs": jobs,
        "workers": workers,
        "one_process_s": one,
        "pool_s": many,
        "speedup": one / many,
        # CPU seconds actually obtained: on a shared machine wall-clock speed-up is bounded by the
        # CPU share the scheduler gives us, so report it beside the wall times
        "one_process_cpu_s": one_cpu,
        "pool_workers_cpu_s": worker_cpu,
        "cpu_share_one_process": one_cpu / one,
        "cpu_share_pool": worker_cpu / many,
        "max_abs_error": err,
        "load_average_1min": os.getloadavg()[0],
    }


def refresh_precision(
    params: ParamSet, lams: tuple[int, ...] = (30, 40, 50), bound: float = 4.0, seed: int = 0
) -> dict[str, Any]:
    """Measured max error and time of one client-aided refresh round trip for several lambda."""
    from p3eft.fhe import ops, refresh

    ctx, sk = keygen(params)
    x = np.random.default_rng(seed).uniform(-bound, bound, params.slots)
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    out = {}
    for lam in lams:
        t0 = time.perf_counter()
        fresh = refresh.refresh_local(ctx, sk, low, bound, lam)
        secs = time.perf_counter() - t0
        out[f"lambda_{lam}"] = {
            "max_abs_error": float(np.abs(tensor.decrypt(sk, ctx, fresh) - x).max()),
            "round_trip_s": secs,
            "bound": bound,
        }
    return out


def ours_matvec_time(params: ParamSet, n_out: int, n_in: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Time our BSGS product for a random n_out x n_in matrix, two ways, ``repeats`` times each:

    * kernel only: weights already encoded (``prepare``), the product alone (``seconds``);
    * kernel + encoding: a fresh :class:`StaggeredMatrix` from the NumPy weights each time, its
      diagonals built and encoded, then the product (``with_encode_seconds``): what TenSEAL's
      ``CKKSVector.mm``, which takes the weights as a list, does in every call.
    """
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
    x = rng.uniform(-1, 1, n_in)
    mat = StaggeredMatrix(weight, params.slots)
    t0 = time.perf_counter()
    ctx, sk = keygen(params, mat.galois_steps())
    galois_s = time.perf_counter() - t0
    xs = [
        tensor.encrypt(ctx, xb, lay) for xb, lay in zip(mat.split_input(x), mat.input_layouts(), strict=True)
    ]
    t0 = time.perf_counter()
    mat.prepare(ctx)
    encode_s = time.perf_counter() - t0
    out: list = []
    tm = _timing(lambda: out.append(mat(ctx, xs)), repeats)
    y = np.concatenate([tensor.decrypt(sk, ctx, c) for c in out[-1]])

    def with_encoding() -> None:
        fresh = StaggeredMatrix(weight, params.slots)
        out.append(fresh(ctx, xs))

    tm_enc = _timing(with_encoding, repeats)
    y_enc = np.concatenate([tensor.decrypt(sk, ctx, c) for c in out[-1]])
    return {
        "seconds": tm.wall_s,
        "cpu_seconds": tm.cpu_s,
        "min_seconds": tm.min_wall_s,
        "with_encode_seconds": tm_enc.wall_s,
        "with_encode_cpu_seconds": tm_enc.cpu_s,
        "runs": min(tm.runs, tm_enc.runs),
        "max_abs_error": float(np.abs(y - weight @ x).max()),
        "with_encode_max_abs_error": float(np.abs(y_enc - weight @ x).max()),
        "weight_encode_s": encode_s,
        "keygen_with_galois_s": galois_s,
        "galois_steps": len(ctx.galois_steps),
        "galois_keys_bytes": len(ctx.key_bytes("galois_keys")),
        "x": x,
        "weight": weight,
    }


def ours_batch_time(params: ParamSet, rows: int, n: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n, n)) / np.sqrt(n)
    x = rng.uniform(-1, 1, (rows, n))
    mat = BatchMatrix(weight, params.slots)
    ctx, sk = keygen(params, mat.galois_steps())
    ct = tensor.encrypt(ctx, x, mat.input_layout(rows))
    mat.prepare(ctx)
    out: list = []
    tm = _timing(lambda: out.append(mat(ctx, ct)), repeats)
    y = tensor.decrypt(sk, ctx, out[-1])
    tm_enc = _timing(lambda: out.append(BatchMatrix(weight, params.slots)(ctx, ct)), repeats)
    return {
        "seconds": tm.wall_s,
        "cpu_seconds": tm.cpu_s,
        "min_seconds": tm.min_wall_s,
        "with_encode_seconds": tm_enc.wall_s,
        "with_encode_cpu_seconds": tm_enc.cpu_s,
        "runs": min(tm.runs, tm_enc.runs),
        "max_abs_error": float(np.abs(y - x @ weight.T).max()),
        "x": x,
        "weight": weight,
    }


def like_for_like(ours: dict[str, Any], theirs: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the comparison with TenSEAL: our product timed kernel only (weights pre-encoded) and
    kernel + encoding (what TenSEAL's ``mm`` does in every call), against TenSEAL, with the ratios in
    CPU time and in wall time for both. Refuses timings over different numbers of runs: a median of 3
    against a single run is not a comparison."""
    rec = {
        "runs": ours["runs"],
        "ours_s": ours["seconds"],
        "ours_cpu_s": ours["cpu_seconds"],
        "ours_with_encode_s": ours["with_encode_seconds"],
        "ours_with_encode_cpu_s": ours["with_encode_cpu_seconds"],
        "ours_max_abs_error": ours["max_abs_error"],
    }
    if theirs is None:
        return rec
    if theirs["runs"] != ours["runs"]:
        raise ValueError(f"unequal repeats: ours {ours['runs']}, TenSEAL {theirs['runs']}")
    return {
        **rec,
        "tenseal_mm_s": theirs["seconds"],
        "tenseal_mm_cpu_s": theirs["cpu_seconds"],
        "tenseal_max_abs_error": theirs["max_abs_error"],
        "ratio_kernel_wall": theirs["seconds"] / ours["seconds"],
        "ratio_kernel_cpu": theirs["cpu_seconds"] / ours["cpu_seconds"],
        "ratio_with_encode_wall": theirs["seconds"] / ours["with_encode_seconds"],
        "ratio_with_encode_cpu": theirs["cpu_seconds"] / ours["with_encode_cpu_seconds"],
    }


def _basic_costs(params: ParamSet, repeats: int) -> dict[str, Any]:
    """Encryption, decryption and byte sizes of one fresh full ciphertext and of each key."""
    rec: dict[str, Any] = {}
    ctx, sk = keygen(params, [1])
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, params.slots)
    layout = Layout(params.slots, 1, params.slots, "rows")
    enc = _timing(lambda: tensor.encrypt(ctx, values, layout), repeats)
    rec["encrypt_s"], rec["encrypt_cpu_s"] = enc.wall_s, enc.cpu_s
    ct = tensor.encrypt(ctx, values, layout)
    dec = _timing(lambda: tensor.decrypt(sk, ctx, ct), repeats)
    rec["decrypt_s"], rec["decrypt_cpu_s"] = dec.wall_s, dec.cpu_s
    rec["fresh_max_abs_error"] = float(np.abs(tensor.decrypt(sk, ctx, ct) - values).max())
    rec["ciphertext_bytes"] = len(ctx.ciphertext_to_bytes(ct))
    # the key holder's compact upload (symmetric, seed-compressed): what a data owner really sends
    rec["encrypt_seeded_s"] = _median_time(
        lambda: tensor.encrypt_seeded_bytes(sk, ctx, values, layout), repeats
    )
    seeded = tensor.encrypt_seeded_bytes(sk, ctx, values, layout)
    rec["ciphertext_seeded_bytes"] = len(seeded)
    back = ctx.ciphertext_from_bytes(seeded)
    rec["seeded_max_abs_error"] = float(np.abs(tensor.decrypt(sk, ctx, back) - values).max())
    rec["public_key_bytes"] = len(ctx.key_bytes("public_key"))
    rec["relin_keys_bytes"] = len(ctx.key_bytes("relin_keys"))
    rec["galois_key_bytes_per_step"] = len(ctx.key_bytes("galois_keys"))
    rec["secret_key_bytes"] = len(sk.to_bytes())
    return rec


def _galois_costs(params: ParamSet) -> dict[str, Any]:
    """Key generation time and size of the Galois keys our 768x768 kernel needs (and only those)."""
    steps = staggered_steps(768, 768, params.slots)
    t0 = time.perf_counter()
    keygen(params)
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx, _sk = keygen(params, steps)
    return {
        "galois_keygen_768x768_s": max(0.0, time.perf_counter() - t0 - base),
        "galois_keys_bytes": len(ctx.key_bytes("galois_keys")),
        "galois_steps_768x768": len(steps),
    }


def measure_param_set(
    name: str,
    repeats: int = 3,
    matvec: bool = True,
    with_tenseal: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All cost figures for one named parameter set."""
    say = progress or (lambda _msg: None)
    params = get_param_set(name)
    rec: dict[str, Any] = {
        "poly_modulus_degree": params.poly_modulus_degree,
        "security_bits": params.security_bits,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "total_modulus_bits": params.total_bits,
        "scale_bits": params.scale_bits,
        "depth": params.depth,
        "slots": params.slots,
    }
    say(f"{name}: key generation")
    kg = _timing(lambda: keygen(params), repeats)
    rec["keygen_s"], rec["keygen_cpu_s"] = kg.wall_s, kg.cpu_s
    say(f"{name}: encrypt/decrypt and sizes")
    rec.update(_basic_costs(params, repeats))
    lam = DEFAULT_LAMBDA
    say(f"{name}: client-aided refresh (lambda={lam})")
    ref = refresh_precision(params, (lam,))[f"lambda_{lam}"]
    rec["refresh_lambda"] = lam
    rec["refresh_round_trip_s"] = ref["round_trip_s"]
    rec["refresh_max_abs_error"] = ref["max_abs_error"]
    rec["refresh_message_bound"] = ref["bound"]
    say(f"{name}: Galois keys for the 768x768 kernel")
    rec.update(_galois_costs(params))
    if matvec:
        say(f"{name}: our 768x768 product")
        res = ours_matvec_time(params, 768, 768, repeats)
        rec["matvec_768x768_s"] = res["seconds"]
        rec["matvec_768x768_cpu_s"] = res["cpu_seconds"]
        rec["matvec_768x768_min_s"] = res["min_seconds"]
        rec["matvec_768x768_max_abs_error"] = res["max_abs_error"]
        rec["matvec_768x768_weight_encode_s"] = res["weight_encode_s"]
        rec["matvec_768x768_with_encode_s"] = res["with_encode_seconds"]
        rec["matvec_768x768_with_encode_cpu_s"] = res["with_encode_cpu_seconds"]
        if with_tenseal:
            say(f"{name}: TenSEAL CKKSVector.mm 768x768 (slow)")
            ts_res = tenseal_mm(params, res["x"], res["weight"].T, repeats)
            rec["tenseal_mm_768x768_s"] = ts_res["seconds"]
            rec["tenseal_mm_768x768_cpu_s"] = ts_res["cpu_seconds"]
            rec["tenseal_mm_768x768_max_abs_error"] = ts_res["max_abs_error"]
            rec["speedup_768x768"] = rec["tenseal_mm_768x768_s"] / rec["matvec_768x768_s"]
            rec["speedup_768x768_cpu"] = rec["tenseal_mm_768x768_cpu_s"] / rec["matvec_768x768_cpu_s"]
            rec["speedup_768x768_with_encode_cpu"] = (
                rec["tenseal_mm_768x768_cpu_s"] / rec["matvec_768x768_with_encode_cpu_s"]
            )
    return rec
