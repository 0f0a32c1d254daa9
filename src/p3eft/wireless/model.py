"""Energy, time and privacy of PrivTuner's wireless system (ours, stated in docs/wireless.md).

For user n with bandwidth b_n, transmit power p_n, device CPU frequency f_n, server frequency share
f_s,n and FHE candidate k_n (an N with its modulus chain), running e_n training steps this round:

* uplink rate        r_n = b_n log2(1 + p_n g_n / (N0 b_n))                 (Shannon, FDMA)
* downlink rate      r_dl,n = b_n eta_n, eta_n = log2(1 + S_dl g_n / N0)     (same band, BS PSD S_dl)
* uplink bits        D_n = e_n (bits_up(k) + key_bits(k) / (dataset_n x epochs))   (key amortised)
* downlink bits      D_dl,n = e_n bits_down(k)                              (refresh requests, outputs)
* device CPU         E_dev = kappa C_dev f_n^2, time C_dev / f_n, C_dev = e_n device_cpu_s(k) cpu_hz
* uplink             E_tx = p_n D_n / r_n, time D_n / r_n
* downlink           device receives: E_rx = p_rx D_dl / r_dl; base station sends: E_dl = S_dl D_dl / eta
* server             E_s = kappa_s C_s f_s,n^2, time C_s / f_s,n, C_s = e_n server_cpu_s(k) cpu_hz
* refresh latency    e_n R(k) tau (fixed time per round trip)
* privacy            P(k) = HE-standard security label of the candidate's log Q at its N

The objective is  sum_n w1 (E_dev + E_tx + E_rx) + w2 (E_s + E_dl) - w3 sum_n P(k_n), each user's
stage times summing to at most its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3eft.wireless.costs import CostSource, CostTable
from p3eft.wireless.scenario import Scenario, dbm_per_hz_to_w_per_hz


def uplink_rate(b: np.ndarray, p: np.ndarray, g: np.ndarray, n0: float) -> np.ndarray:
    """Shannon rate of an FDMA link in bit/s: b log2(1 + p g / (N0 b))."""
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, b * np.log2(1.0 + p * g / (n0 * np.maximum(b, 1e-300))), 0.0)


def downlink_efficiency(psd_w_hz: float, g: np.ndarray, n0: float) -> np.ndarray:
    """Downlink spectral efficiency log2(1 + S_dl g / N0) in bit/s/Hz (fixed base-station PSD)."""
    return np.log2(1.0 + psd_w_hz * np.asarray(g, dtype=float) / n0)


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
    """A scenario joined with its candidates' step costs: per-user, per-candidate arrays (U x K).

    ``allowed[n, k]`` is False where candidate k falls below user n's privacy floor.
    """

    scenario: Scenario
    table: CostTable
    g: np.ndarray  # (U,) channel gains
    n0: float  # W/Hz
    eta: np.ndarray  # (U,) downlink bit/s/Hz
    psd_dl: float  # W/Hz
    deadlines: np.ndarray  # (U,) effective T_n
    bits: np.ndarray  # (U, K) uplink bits (incl. the amortised key share)
    key_bits: np.ndarray  # (U, K) of which the key share
    down_bits: np.ndarray  # (U, K)
    device_cycles: np.ndarray  # (U, K)
    server_cycles: np.ndarray  # (U, K)
    latency: np.ndarray  # (U, K) refresh round trips x tau
    round_trips: np.ndarray  # (U, K)
    privacy: np.ndarray  # (K,)
    allowed: np.ndarray  # (U, K) bool

    @classmethod
    def build(cls, scenario: Scenario, source: CostSource | CostTable) -> Problem:
        table = source if isinstance(source, CostTable) else source.for_scenario(scenario)
        a = table.arrays()
        s = scenario
        e = np.array(s.examples, dtype=float)[:, None]
        run_steps = np.array(s.dataset_examples, dtype=float)[:, None] * s.epochs
        key = e * a["key_bits"][None, :] / run_steps
        floor = np.array(s.privacy_floor_bits, dtype=float)[:, None]
        g = s.channel_gain
        n0 = s.noise_psd_w_hz
        psd = dbm_per_hz_to_w_per_hz(s.downlink_psd_dbm_hz)
        trips = e * a["round_trips"][None, :]
        return cls(
            scenario=s,
            table=table,
            g=g,
            n0=n0,
            eta=downlink_efficiency(psd, g, n0),
            psd_dl=psd,
            deadlines=s.effective_deadlines(),
            bits=e * a["bits_up"][None, :] + key,
            key_bits=key,
            down_bits=e * a["bits_down"][None, :],
            device_cycles=e * a["device_cycles"][None, :],
            server_cycles=e * a["server_cycles"][None, :] * s.server_products,
            latency=trips * s.round_trip_latency_s,
            round_trips=trips,
            privacy=a["security_bits"],
            allowed=np.broadcast_to(
                a["security_bits"][None, :] >= floor - 1e-9, (len(g), len(a["n"]))
            ).copy(),
        )

    @property
    def n_users(self) -> int:
        return self.g.shape[0]

    @property
    def n_sets(self) -> int:
        return self.privacy.shape[0]

    def user_costs(self, choice: np.ndarray) -> UserCosts:
        """Per-user workload under a choice vector (indices into the candidates)."""
        idx = np.arange(self.n_users)
        c = np.asarray(choice, dtype=int)
        return UserCosts(
            bits=self.bits[idx, c],
            down_bits=self.down_bits[idx, c],
            device_cycles=self.device_cycles[idx, c],
            server_cycles=self.server_cycles[idx, c],
            latency=self.latency[idx, c],
            privacy=self.privacy[c],
        )

    def relaxed_costs(self, lo: np.ndarray, hi: np.ndarray) -> UserCosts:
        """Relaxation (ours): each user's costs the componentwise minimum over its candidates lo..hi,
        its privacy the maximum. Every cost term is non-decreasing in every component, so the relaxed
        optimum bounds every real choice in the box from below."""
        k = np.arange(self.n_sets)[None, :]
        inside = (k >= np.asarray(lo)[:, None]) & (k <= np.asarray(hi)[:, None])

        def cmin(a: np.ndarray) -> np.ndarray:
            return np.where(inside, a, np.inf).min(axis=1)

        return UserCosts(
            bits=cmin(self.bits),
            down_bits=cmin(self.down_bits),
            device_cycles=cmin(self.device_cycles),
            server_cycles=cmin(self.server_cycles),
            latency=cmin(self.latency),
            privacy=np.where(inside, self.privacy[None, :], -np.inf).max(axis=1),
        )


@dataclass(frozen=True)
class UserCosts:
    """Per-user workload of one round for one choice of candidates."""

    bits: np.ndarray  # uplink
    down_bits: np.ndarray
    device_cycles: np.ndarray
    server_cycles: np.ndarray
    latency: np.ndarray  # s, fixed
    privacy: np.ndarray
