"""Step costs that a cost file did not measure, derived by stated models (all of this module is ours).

Two situations, both within one ring dimension N (never across N):

1. **From the CKKS engine's file** (the default until the PrivTuner bench file exists). The engine
   measured per-ciphertext CPU times and sizes at one chain per N. A training step is modelled as
   :class:`EngineWorkload`: the example's ``values`` are packed into ``n_ct = ceil(values / slots)``
   seeded ciphertexts and uploaded; the step consumes ``step_levels`` rescales on them, so with ``u``
   usable levels per refresh cycle it needs ``R = ceil(step_levels / u) - 1`` refresh round trips,
   each sending ``n_ct`` ciphertexts at the refresh level down (the data owner decrypts them) and
   ``n_ct`` fresh seeded ciphertexts back up (it re-encrypts them); the server does
   ``products_per_ct`` plaintext x ciphertext products (in units of the engine's measured 768 x 768
   product) per ciphertext; one ciphertext of logits comes down and one encrypted gradient goes up.
2. **From a PrivTuner step-cost entry at another chain of the same N.** The measured step consumed at
   most ``M = (R + 1) u`` levels; the candidate needs ``R' = max(0, ceil(M / u') - 1)`` round trips.
   Traffic and device CPU are split evenly over the ``R + 1`` ciphertext exchanges (the upload and
   each refresh round trip) and scaled to ``R' + 1`` exchanges.

Per-prime scaling (both cases): a ciphertext has one residue polynomial pair per data prime, so its
size, its encryption/decryption CPU and the server's per-ciphertext CPU scale with the prime count
(encryption runs over the special prime too); a key-switching key (relinearisation, Galois) has one
component per data prime, each over all primes, so its size scales with k (k + 1). These are
first-order models of SEAL's layout, not measurements; every derived cost says so in ``source``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from p3eft.wireless.candidates import Candidate
from p3eft.wireless.costs import StepCost


@dataclass(frozen=True)
class EngineWorkload:
    """One PrivTuner training step as seen by the cost model (ours, used only with the engine's file).

    ``values``: 64 tokens x 384 (all-MiniLM-L6-v2's hidden size, the project's real encoder).
    ``step_levels``: rescales a forward + backward step consumes on the activation ciphertexts.
    ``products_per_ct``: plaintext x ciphertext products per activation ciphertext per step, in units of
    the engine's 768 x 768 product. Both are our placeholders for the PrivTuner bench's measurement.
    """

    values: int = 64 * 384
    step_levels: int = 24
    products_per_ct: float = 6.0


ENGINE_WORKLOAD = EngineWorkload()


def _nearest(c: Candidate, same_n: dict[tuple[int, ...], Any]) -> tuple[tuple[int, ...], Any]:
    """The measured chain of the same N closest to the candidate's depth (deeper wins ties)."""
    return min(same_n.items(), key=lambda kv: (abs(len(kv[0]) - len(c.coeff_modulus_bits)), -len(kv[0])))


def refresh_round_trips(step_levels: float, usable_levels: int) -> int:
    """Round trips so that a step of ``step_levels`` rescales fits ``usable_levels`` per cycle (ours)."""
    return max(0, math.ceil(step_levels / usable_levels) - 1)


def from_engine(
    c: Candidate,
    same_n: dict[tuple[int, ...], dict[str, Any]],
    path: str,
    w: EngineWorkload = ENGINE_WORKLOAD,
) -> StepCost:
    """Per-example step cost of candidate ``c`` from the engine's per-ciphertext CPU times (model 1)."""
    bits, e = _nearest(c, same_n)
    k_m, k_c = len(bits) - 1, c.data_primes
    rl = c.refresh_level + 1  # primes of a ciphertext at the refresh level
    n_ct = math.ceil(w.values / c.slots)
    trips = refresh_round_trips(w.step_levels, c.usable_levels)
    enc_s = e["encrypt_cpu_s"] * (k_c + 1) / (k_m + 1)
    dec_s = e["decrypt_cpu_s"] * rl / k_m
    seeded = e["ciphertext_seeded_bytes"] * k_c / k_m
    ct_at_refresh = e["ciphertext_bytes"] * rl / k_m
    uploads = n_ct * (1 + trips) + 1  # fresh inputs, refresh answers, the encrypted gradient
    downloads = n_ct * trips + 1  # refresh requests, the logits
    ksk = k_c * (k_c + 1) / (k_m * (k_m + 1))
    keys = (
        e["public_key_bytes"] * (k_c + 1) / (k_m + 1) + (e["relin_keys_bytes"] + e["galois_keys_bytes"]) * ksk
    )
    return StepCost(
        candidate=c,
        device_cpu_s=uploads * enc_s + downloads * dec_s,
        server_cpu_s=n_ct * w.products_per_ct * e["matvec_768x768_cpu_s"] * k_c / k_m,
        bytes_up=uploads * seeded,
        bytes_down=downloads * ct_at_refresh,
        refresh_round_trips=float(trips),
        key_upload_bytes=keys,
        source=(
            f"derived (ours) from the engine file's CPU times at {e['name']} {list(bits)} ({path}); "
            f"workload {asdict(w)}: {n_ct} ciphertexts/example, {trips} refresh round trips"
        ),
    )


def from_step_entry(c: Candidate, same_n: dict[tuple[int, ...], dict[str, Any]], path: str) -> StepCost:
    """Step cost of candidate ``c`` from a measured PrivTuner entry at another chain of its N (model 2)."""
    bits, e = _nearest(c, same_n)
    path = e.get("path", path)  # the file that measured the entry (several files may be combined)
    m = Candidate(c.n, bits)
    pe = e["per_example"]
    k_m, k_c = m.data_primes, c.data_primes
    levels = (pe["refresh_round_trips"] + 1) * m.usable_levels
    trips = refresh_round_trips(levels, c.usable_levels)
    ex = (trips + 1) / (pe["refresh_round_trips"] + 1)  # ciphertext exchanges, relative
    ksk = k_c * (k_c + 1) / (k_m * (k_m + 1))
    return StepCost(
        candidate=c,
        device_cpu_s=pe["device_cpu_s"] * ex * (k_c + 1) / (k_m + 1),
        server_cpu_s=pe["server_cpu_s"] * k_c / k_m,
        bytes_up=pe["bytes_up"] * ex * k_c / k_m,
        bytes_down=pe["bytes_down"] * ex * (c.refresh_level + 1) / (m.refresh_level + 1),
        refresh_round_trips=float(trips),
        key_upload_bytes=e["key_upload_bytes"] * ksk,
        source=(
            f"derived (ours) from the measured entry {e['name']} {list(bits)} ({path}): "
            f"{trips} refresh round trips for <= {levels:g} levels, traffic/CPU per exchange and per prime"
        ),
        cpu_hz=e.get("cpu_hz"),
    )
