"""Seedable multi-user scenarios for PrivTuner's wireless system, saved to and loaded from YAML/JSON.

The system model is our reconstruction in the PrivTuner paper's frame (docs/wireless.md, "System
model"): users dropped uniformly in a disc around the model owner's base station, path loss
128.1 + 37.6 log10(d/km) dB, optional Rayleigh fading, noise PSD -174 dBm/Hz, one FDMA band per user
that carries its uplink and the downlink (refresh requests, outputs). Default numbers are ours, chosen
so that deadlines, bandwidth and server capacity all matter at the default weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from p3eft.wireless.candidates import DEFAULT_CANDIDATE_SPECS, Candidate
from p3eft.wireless.errors import ScenarioError


def path_loss_db(distance_m: np.ndarray) -> np.ndarray:
    """Urban macro path loss 128.1 + 37.6 log10(d/km) dB (3GPP TR 36.814 model used in the paper's frame)."""
    return 128.1 + 37.6 * np.log10(np.asarray(distance_m, dtype=float) / 1000.0)


def dbm_per_hz_to_w_per_hz(dbm: float) -> float:
    """Noise PSD from dBm/Hz to W/Hz."""
    return 10.0 ** (dbm / 10.0) / 1000.0


_FLOAT_FIELDS = (
    "bandwidth_hz",
    "p_max_w",
    "f_min_hz",
    "f_max_hz",
    "server_hz",
    "kappa_device",
    "kappa_server",
    "noise_psd_dbm_hz",
    "server_products",
    "downlink_psd_dbm_hz",
    "rx_power_w",
    "round_trip_latency_s",
    "epochs",
    "horizon_s",
)

#: Fields of earlier scenario files and what replaced them (for a useful error).
_RENAMED = {
    "data_values": "examples (training examples per user; per-example costs come from the step-cost file)",
    "allowed_sets": "candidates (each an N with its modulus chain, e.g. 'N16384-d4')",
}


@dataclass
class Scenario:
    """Everything the optimiser needs except the FHE costs (which come from the cost file).

    Per-user lists have one entry per user; scalars are system-wide. Units: metres, Hz, W, cycles/s,
    seconds, bits, joules. ``weights`` are (w1 device energy, w2 server energy, w3 J per privacy bit).
    """

    distances_m: list[float]
    fading: list[float]  # small-scale power gain |h|^2 (1.0 without fading)
    examples: list[int]  # training examples (one PrivTuner step each) the user runs in this round
    deadlines_s: list[float]  # T_n for the round; inf = no deadline of its own (horizon_s applies)
    privacy_floor_bits: list[float]  # P_min,n
    dataset_examples: list[int]  # examples in the user's data set: the key upload is amortised over
    #                              dataset_examples x epochs steps of the run
    bandwidth_hz: float = 20e6  # B, shared by every user's FDMA band (uplink and downlink)
    p_max_w: float = 0.2  # p_max (23 dBm)
    f_min_hz: float = 0.5e9
    f_max_hz: float = 2.0e9
    server_hz: float = 10e9  # F_s, total server cycles per second shared by all users
    kappa_device: float = 1e-28  # effective switched capacitance (E = kappa C f^2)
    kappa_server: float = 1e-28
    noise_psd_dbm_hz: float = -174.0
    server_products: float = 1.0  # scale on the server CPU of a step (1 = as in the cost file)
    downlink_psd_dbm_hz: float = -40.0  # base-station transmit PSD on a user band (33 dBm over 20 MHz)
    rx_power_w: float = 0.1  # device radio power while receiving
    round_trip_latency_s: float = 0.01  # fixed latency of one refresh round trip (scheduling, RTT)
    epochs: float = 1.0  # epochs of the run (key amortisation)
    horizon_s: float = 3600.0  # time bound for users without a deadline of their own
    weights: tuple[float, float, float] = (1.0, 1.0, 0.02)
    candidates: list[Any] = field(default_factory=lambda: list(DEFAULT_CANDIDATE_SPECS))
    seed: int | None = None

    def __post_init__(self) -> None:
        # YAML 1.1 reads "1e-28" (no dot) as a string: coerce every numeric field explicitly
        try:
            for name in _FLOAT_FIELDS:
                setattr(self, name, float(getattr(self, name)))
            for name in ("distances_m", "fading", "deadlines_s", "privacy_floor_bits"):
                setattr(self, name, [float(x) for x in getattr(self, name)])
            for name in ("examples", "dataset_examples"):
                vals = [float(x) for x in getattr(self, name)]
                if any(not (math.isfinite(v) and v == int(v)) for v in vals):
                    raise ScenarioError(f"scenario field {name!r} must hold whole numbers, got {vals}")
                setattr(self, name, [int(v) for v in vals])
            self.weights = tuple(float(w) for w in self.weights)  # type: ignore[assignment]
        except (TypeError, ValueError) as err:
            raise ScenarioError(f"scenario has a non-numeric value: {err}") from err
        if not isinstance(self.candidates, (list, tuple)) or not self.candidates:
            raise ScenarioError("candidates must list at least one FHE candidate (N with its chain)")
        cands = [Candidate.from_spec(c) for c in self.candidates]
        keys = [(c.n, c.coeff_modulus_bits) for c in cands]
        if len(set(keys)) != len(keys):
            raise ScenarioError("candidates must not repeat an (N, chain)")
        self.candidates = [c.to_dict() for c in cands]
        self.validate()

    @property
    def n_users(self) -> int:
        return len(self.distances_m)

    @property
    def channel_gain(self) -> np.ndarray:
        """g_n = 10^(-PL(d_n)/10) x |h_n|^2 (linear power gain)."""
        return 10.0 ** (-path_loss_db(np.array(self.distances_m)) / 10.0) * np.array(self.fading)

    @property
    def noise_psd_w_hz(self) -> float:
        return dbm_per_hz_to_w_per_hz(self.noise_psd_dbm_hz)

    @property
    def candidate_list(self) -> list[Candidate]:
        return [Candidate.from_spec(c) for c in self.candidates]

    @property
    def uses_default_candidates(self) -> bool:
        """True when the candidates are the default set (written out or not, in any order): then a
        cost file may leave some out with a stated reason; a set of one's own must be priced whole."""
        default = {(c.n, c.coeff_modulus_bits) for c in map(Candidate.from_spec, DEFAULT_CANDIDATE_SPECS)}
        return {(c.n, c.coeff_modulus_bits) for c in self.candidate_list} == default

    def effective_deadlines(self) -> np.ndarray:
        """T_n, with the horizon standing in for users without a deadline of their own.

        Without any time bound the model has no minimum (server energy kappa C f_s^2 falls to 0 as
        f_s -> 0), so "no deadline" means "bounded only by the horizon" (ours).
        """
        t = np.array(self.deadlines_s, dtype=float)
        return np.where(np.isinf(t), self.horizon_s, t)

    def validate(self) -> None:
        u = len(self.distances_m)
        if u < 1:
            raise ScenarioError("a scenario needs at least one user")
        per_user = ("fading", "examples", "deadlines_s", "privacy_floor_bits", "dataset_examples")
        for name in per_user:
            if len(getattr(self, name)) != u:
                raise ScenarioError(
                    f"scenario field {name!r} has {len(getattr(self, name))} entries, expected {u}"
                )
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise ScenarioError(
                    f"scenario field {name!r} must be a finite number, got {getattr(self, name)!r}"
                )
        positive = (
            "bandwidth_hz",
            "p_max_w",
            "f_min_hz",
            "f_max_hz",
            "server_hz",
            "kappa_device",
            "kappa_server",
            "server_products",
            "epochs",
            "horizon_s",
        )
        for name in positive:
            if not float(getattr(self, name)) > 0:
                raise ScenarioError(f"scenario field {name!r} must be > 0, got {getattr(self, name)!r}")
        for name in ("rx_power_w", "round_trip_latency_s"):
            if getattr(self, name) < 0:
                raise ScenarioError(f"scenario field {name!r} must be >= 0, got {getattr(self, name)!r}")
        if self.f_min_hz > self.f_max_hz:
            raise ScenarioError("f_min_hz must not exceed f_max_hz")
        for name in ("distances_m", "fading"):
            if any(not (math.isfinite(x) and x > 0) for x in getattr(self, name)):
                raise ScenarioError(f"scenario field {name!r} must hold finite numbers > 0")
        if any(x < 1 for x in self.examples) or any(x < 1 for x in self.dataset_examples):
            raise ScenarioError("examples and dataset_examples must be >= 1")
        if any(math.isnan(t) or not t > 0 for t in self.deadlines_s):
            raise ScenarioError("deadlines must be > 0 (inf means no deadline of its own), not NaN")
        if any(not math.isfinite(x) for x in self.privacy_floor_bits):
            raise ScenarioError("privacy floors must be finite numbers of bits")
        w = self.weights
        if len(w) != 3 or not all(math.isfinite(x) for x in w) or w[0] <= 0 or w[1] <= 0 or w[2] < 0:
            raise ScenarioError(f"weights must be finite (w1 > 0, w2 > 0, w3 >= 0), got {list(w)}")

    def with_(self, **changes: Any) -> Scenario:
        """A copy with some fields replaced (validated)."""
        return replace(self, **changes)

    def subset(self, users: list[int]) -> Scenario:
        """The scenario restricted to some users (same system-wide resources)."""
        per_user = (
            "distances_m",
            "fading",
            "examples",
            "deadlines_s",
            "privacy_floor_bits",
            "dataset_examples",
        )
        return replace(self, **{k: [getattr(self, k)[i] for i in users] for k in per_user})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = list(self.weights)
        return d

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        p = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False)
            if p.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=2)
        )
        p.write_text(text)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        if not isinstance(d, dict):
            raise ScenarioError("a scenario must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        renamed = [f"{k!r} is now {_RENAMED[k]}" for k in unknown if k in _RENAMED]
        if renamed:
            raise ScenarioError("scenario from an earlier version: " + "; ".join(renamed))
        if unknown:
            raise ScenarioError(f"unknown scenario field(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as err:
            raise ScenarioError(f"bad scenario: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        p = Path(path)
        if not p.is_file():
            raise ScenarioError(f"scenario file {p} does not exist")
        try:
            text = p.read_text()
            raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise ScenarioError(f"scenario file {p} is not valid YAML/JSON: {err}") from err
        return cls.from_dict(raw)


def generate_scenario(
    n_users: int,
    seed: int = 0,
    *,
    cell_radius_m: float = 500.0,
    min_distance_m: float = 50.0,
    rayleigh: bool = True,
    examples: tuple[int, int] = (1, 4),
    dataset_examples: tuple[int, int] = (200, 2000),
    deadline_s: tuple[float, float] = (150.0, 300.0),
    privacy_floor_bits: float = 128.0,
    bandwidth_per_user_hz: float = 2e6,
    server_per_user_hz: float = 1e9,
    **system: Any,
) -> Scenario:
    """Draw a scenario: users uniform in the disc (area-uniform radius), sizes/deadlines uniform.

    B and F_s scale with the user count (``bandwidth_per_user_hz`` x U, ``server_per_user_hz`` x U),
    so a generated scenario stays feasible as U grows; ``system`` overrides any :class:`Scenario`
    system-wide field (an explicit ``bandwidth_hz`` or ``server_hz`` wins over the per-user rate).
    Each user runs 1..4 training steps this round (uniform), with a data set of 200..2000 examples.
    """
    if n_users < 1:
        raise ScenarioError("n_users must be >= 1")
    for name, val in (
        ("bandwidth_per_user_hz", bandwidth_per_user_hz),
        ("server_per_user_hz", server_per_user_hz),
    ):
        if not (math.isfinite(val) and val > 0):
            raise ScenarioError(f"{name} must be a positive number, got {val!r}")
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(min_distance_m**2, cell_radius_m**2, n_users))
    fading = rng.exponential(1.0, n_users) if rayleigh else np.ones(n_users)
    fading = np.maximum(fading, 0.05)  # ours: drop deep fades (< -13 dB) that no deadline could survive
    e = rng.integers(examples[0], examples[1] + 1, n_users)
    t = rng.uniform(deadline_s[0], deadline_s[1], n_users)
    ds = rng.integers(dataset_examples[0], dataset_examples[1] + 1, n_users)
    system.setdefault("bandwidth_hz", bandwidth_per_user_hz * n_users)
    system.setdefault("server_hz", server_per_user_hz * n_users)
    return Scenario(
        distances_m=[float(x) for x in r],
        fading=[float(x) for x in fading],
        examples=[int(x) for x in e],
        deadlines_s=[float(x) for x in t],
        privacy_floor_bits=[float(privacy_floor_bits)] * n_users,
        dataset_examples=[int(x) for x in ds],
        seed=seed,
        **system,
    )
