"""Seedable multi-user scenarios for PrivTuner's wireless system, saved to and loaded from YAML/JSON.

The system model is our reconstruction in the PrivTuner paper's frame (DESIGN.md section 2.2): users
dropped uniformly in a disc around the model owner's base station, path loss 128.1 + 37.6 log10(d/km)
dB, optional Rayleigh fading, noise PSD -174 dBm/Hz, one FDMA uplink per user. Default numbers are
ours, chosen so that deadlines, bandwidth and server capacity all matter at the default weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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
)


@dataclass
class Scenario:
    """Everything the optimiser needs except the FHE costs (which come from the cost file).

    Per-user lists have one entry per user; scalars are system-wide. Units: metres, Hz, W, cycles/s,
    seconds, bits, joules. ``weights`` are (w1 device energy, w2 server energy, w3 J per privacy bit).
    """

    distances_m: list[float]
    fading: list[float]  # small-scale power gain |h|^2 (1.0 without fading)
    data_values: list[int]  # real values each user encrypts and uploads (d_n)
    deadlines_s: list[float]  # T_n: encryption + upload + server time
    privacy_floor_bits: list[float]  # P_min,n
    bandwidth_hz: float = 20e6  # B
    p_max_w: float = 0.2  # p_max (23 dBm)
    f_min_hz: float = 0.5e9
    f_max_hz: float = 2.0e9
    server_hz: float = 10e9  # F_s, total server cycles per second shared by all users
    kappa_device: float = 1e-28  # effective switched capacitance (E = kappa C f^2)
    kappa_server: float = 1e-28
    noise_psd_dbm_hz: float = -174.0
    server_products: float = 1.0  # plaintext x ciphertext products per uploaded ciphertext
    weights: tuple[float, float, float] = (1.0, 1.0, 0.002)
    allowed_sets: list[str] = field(default_factory=lambda: ["N8192", "N16384", "N32768"])
    seed: int | None = None

    def __post_init__(self) -> None:
        # YAML 1.1 reads "1e-28" (no dot) as a string: coerce every numeric field explicitly
        try:
            for name in _FLOAT_FIELDS:
                setattr(self, name, float(getattr(self, name)))
            for name in ("distances_m", "fading", "deadlines_s", "privacy_floor_bits"):
                setattr(self, name, [float(x) for x in getattr(self, name)])
            self.data_values = [int(x) for x in self.data_values]
            self.weights = tuple(float(w) for w in self.weights)  # type: ignore[assignment]
        except (TypeError, ValueError) as err:
            raise ScenarioError(f"scenario has a non-numeric value: {err}") from err
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

    def validate(self) -> None:
        u = len(self.distances_m)
        if u < 1:
            raise ScenarioError("a scenario needs at least one user")
        for name in ("fading", "data_values", "deadlines_s", "privacy_floor_bits"):
            if len(getattr(self, name)) != u:
                raise ScenarioError(
                    f"scenario field {name!r} has {len(getattr(self, name))} entries, expected {u}"
                )
        positive = (
            "bandwidth_hz",
            "p_max_w",
            "f_min_hz",
            "f_max_hz",
            "server_hz",
            "kappa_device",
            "kappa_server",
        )
        for name in positive:
            if not float(getattr(self, name)) > 0:
                raise ScenarioError(f"scenario field {name!r} must be > 0, got {getattr(self, name)!r}")
        if self.f_min_hz > self.f_max_hz:
            raise ScenarioError("f_min_hz must not exceed f_max_hz")
        if any(not d > 0 for d in self.distances_m) or any(not h > 0 for h in self.fading):
            raise ScenarioError("distances and fading gains must be > 0")
        if any(not d > 0 for d in self.data_values) or any(not t > 0 for t in self.deadlines_s):
            raise ScenarioError("data sizes and deadlines must be > 0")
        if len(self.weights) != 3 or self.weights[0] <= 0 or self.weights[1] <= 0 or self.weights[2] < 0:
            raise ScenarioError("weights must be (w1 > 0, w2 > 0, w3 >= 0)")
        if not self.allowed_sets:
            raise ScenarioError("allowed_sets must name at least one parameter set")

    def with_(self, **changes: Any) -> Scenario:
        """A copy with some fields replaced (validated)."""
        return replace(self, **changes)

    def subset(self, users: list[int]) -> Scenario:
        """The scenario restricted to some users (same system-wide resources)."""
        per_user = ("distances_m", "fading", "data_values", "deadlines_s", "privacy_floor_bits")
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
    data_values: tuple[int, int] = (64 * 384, 256 * 384),
    deadline_s: tuple[float, float] = (40.0, 80.0),
    privacy_floor_bits: float = 128.0,
    **system: Any,
) -> Scenario:
    """Draw a scenario: users uniform in the disc (area-uniform radius), sizes/deadlines uniform.

    ``data_values`` defaults to 64..256 tokens of a 384-wide embedding (all-MiniLM-L6-v2's hidden
    size); ``system`` overrides any :class:`Scenario` system-wide field (bandwidth_hz, weights, ...).
    """
    if n_users < 1:
        raise ScenarioError("n_users must be >= 1")
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(min_distance_m**2, cell_radius_m**2, n_users))
    fading = rng.exponential(1.0, n_users) if rayleigh else np.ones(n_users)
    fading = np.maximum(fading, 0.05)  # ours: drop deep fades (< -13 dB) that no deadline could survive
    d = rng.integers(data_values[0], data_values[1] + 1, n_users)
    t = rng.uniform(deadline_s[0], deadline_s[1], n_users)
    return Scenario(
        distances_m=[float(x) for x in r],
        fading=[float(x) for x in fading],
        data_values=[int(x) for x in d],
        deadlines_s=[float(x) for x in t],
        privacy_floor_bits=[float(privacy_floor_bits)] * n_users,
        seed=seed,
        **system,
    )
