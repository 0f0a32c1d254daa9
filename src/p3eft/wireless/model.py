"""Energy, time and privacy of PrivTuner's wireless system (our reconstruction, DESIGN.md section 2.2).

For user n with bandwidth b_n, transmit power p_n, device CPU frequency f_n, server frequency share
f_s,n and CKKS parameter set N_n:

* uplink rate        r_n = b_n log2(1 + p_n g_n / (N0 b_n))                 (Shannon, FDMA)
* upload bits        D_n(N) = ceil(d_n / slots(N)) x ciphertext_bits(N)     (measured sizes)
* encryption energy  E_enc = kappa C_enc f_n^2, time C_enc / f_n          (C_enc = #ct x cycles/ct)
* transmission       E_tx = p_n D_n / r_n, time D_n / r_n
* server energy      E_s = kappa_s C_s f_s,n^2, time C_s / f_s,n
* privacy            P(N) = security bits of the parameter set

The objective is  sum_n w1 (E_enc + E_tx) + w2 E_s - w3 sum_n P(N_n). These are our formulas in the
paper's frame, not quoted from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3eft.wireless.costs import CostCurves, FheCostTable
from p3eft.wireless.scenario import Scenario


def uplink_rate(b: np.ndarray, p: np.ndarray, g: np.ndarray, n0: float) -> np.ndarray:
    """Shannon rate of an FDMA link in bit/s: b log2(1 + p g / (N0 b))."""
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, b * np.log2(1.0 + p * g / (n0 * np.maximum(b, 1e-300))), 0.0)


def upload_bits(data_values: np.ndarray, slots: float, ciphertext_bits: float) -> np.ndarray:
    """D_n(N) = ceil(d_n / slots) ciphertexts of the measured serialised size."""
    return np.ceil(np.asarray(data_values, dtype=float) / slots) * ciphertext_bits


def encryption_energy(kappa: float, cycles: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Dynamic CMOS energy kappa C f^2 of C device cycles at frequency f."""
    return kappa * cycles * np.asarray(f) ** 2


def transmission_energy(p: np.ndarray, bits: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """E_tx = p D / r: transmit power times upload time."""
    return p * bits / rate


def server_energy(kappa_s: float, cycles: np.ndarray, f_s: np.ndarray) -> np.ndarray:
    """Server's dynamic energy kappa_s C_s f_s^2 for this user's homomorphic work."""
    return kappa_s * cycles * np.asarray(f_s) ** 2


@dataclass(frozen=True)
class Problem:
    """A scenario joined with the FHE costs: per-user, per-parameter-set arrays (U x K).

    ``allowed[n, k]`` is False where set k is not in ``allowed_sets`` or falls below user n's
    privacy floor. Per-user costs for a choice vector come from :meth:`user_costs`.
    """

    scenario: Scenario
    table: FheCostTable
    g: np.ndarray  # (U,) channel gains
    n0: float  # W/Hz
    bits: np.ndarray  # (U, K) D_n(N_k)
    enc_cycles: np.ndarray  # (U, K)
    server_cycles: np.ndarray  # (U, K)
    privacy: np.ndarray  # (K,)
    allowed: np.ndarray  # (U, K) bool
    curves: CostCurves

    @classmethod
    def build(cls, scenario: Scenario, table: FheCostTable) -> Problem:
        a = table.arrays()
        d = np.array(scenario.data_values, dtype=float)[:, None]
        n_ct = np.ceil(d / a["slots"][None, :])
        allowed_names = {table.sets[table.index(name)].name for name in scenario.allowed_sets}
        in_set = np.array([s.name in allowed_names for s in table.sets])
        floor = np.array(scenario.privacy_floor_bits, dtype=float)[:, None]
        return cls(
            scenario=scenario,
            table=table,
            g=scenario.channel_gain,
            n0=scenario.noise_psd_w_hz,
            bits=n_ct * a["ciphertext_bits"][None, :],
            enc_cycles=n_ct * a["encrypt_cycles"][None, :],
            server_cycles=n_ct * a["server_cycles"][None, :] * scenario.server_products,
            privacy=a["security_bits"],
            allowed=in_set[None, :] & (a["security_bits"][None, :] >= floor - 1e-9),
            curves=CostCurves.fit(table),
        )

    @property
    def n_users(self) -> int:
        return self.g.shape[0]

    @property
    def n_sets(self) -> int:
        return self.privacy.shape[0]

    def user_costs(self, choice: np.ndarray) -> UserCosts:
        """Bits, cycles and privacy of each user under a choice vector (indices into the table)."""
        idx = np.arange(self.n_users)
        c = np.asarray(choice, dtype=int)
        return UserCosts(
            bits=self.bits[idx, c],
            enc_cycles=self.enc_cycles[idx, c],
            server_cycles=self.server_cycles[idx, c],
            privacy=self.privacy[c],
        )

    def relaxed_costs(self, lo: np.ndarray, hi: np.ndarray) -> UserCosts:
        """Relaxation (ours): each user's N in the real interval [N_lo, N_hi] on the fitted curves.

        Costs use the curves' per-value minimum over the interval times d_n (no ceil: never more than
        any real choice), privacy their maximum; so the relaxed optimum bounds every integral choice in
        the box from below.
        """
        ns = np.array([s.n for s in self.table.sets], dtype=float)
        d = np.array(self.scenario.data_values, dtype=float)
        out = {k: np.empty(self.n_users) for k in ("bits", "enc", "srv", "priv")}
        cache: dict[tuple[int, int], dict[str, float]] = {}
        for i in range(self.n_users):
            key = (int(lo[i]), int(hi[i]))
            if key not in cache:
                cache[key] = self.curves.interval_extremes(ns[key[0]], ns[key[1]])
            e = cache[key]
            out["bits"][i] = e["bits_per_value"] * d[i]
            out["enc"][i] = e["enc_cycles_per_value"] * d[i]
            out["srv"][i] = e["server_cycles_per_value"] * d[i] * self.scenario.server_products
            out["priv"][i] = e["privacy_bits"]
        return UserCosts(
            bits=out["bits"], enc_cycles=out["enc"], server_cycles=out["srv"], privacy=out["priv"]
        )


@dataclass(frozen=True)
class UserCosts:
    """Per-user FHE workload for one choice of parameter sets."""

    bits: np.ndarray
    enc_cycles: np.ndarray
    server_cycles: np.ndarray
    privacy: np.ndarray
