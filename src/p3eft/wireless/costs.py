"""FHE costs per CKKS parameter set, loaded from the JSON that ``p3eft bench fhe`` writes.

The wireless model never guesses what encryption costs: ciphertext sizes, key sizes and timings are
measured by the CKKS engine on a real machine and stored with their provenance. This module validates
that file, converts times to CPU cycles (``cycles = seconds x cpu_hz``, the measuring machine's clock,
one thread) and fits continuous cost curves in N for the Branch-and-Bound relaxation.

Derived per-ciphertext quantities (our reconstruction in the paper's frame, DESIGN.md section 2.2):

* ``ciphertext_bits = 8 x ciphertext_bytes`` (serialised size as measured);
* ``encrypt_cycles = encrypt_s x cpu_hz``;
* ``server_cycles = matvec_768x768_s x cpu_hz``: one plaintext-weight x ciphertext product of the
  hidden size per uploaded ciphertext (a scenario multiplies it by ``server_products``). When an early
  cost file lacks ``matvec_768x768_s`` we fall back to ``encrypt_s x FALLBACK_MATVEC_PER_ENCRYPT x
  cpu_hz`` and say so in ``server_cycles_source`` (ours, a stated estimate, not a measurement).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.wireless.errors import CostFileError

#: Ratio used only when the cost file has no measured matrix-product time (ours, stated estimate).
FALLBACK_MATVEC_PER_ENCRYPT = 64.0

_REQUIRED = (
    "poly_modulus_degree",
    "security_bits",
    "slots",
    "ciphertext_bytes",
    "encrypt_s",
)


def default_cost_path() -> Path:
    """The packaged cost file measured on the project's reference machine."""
    return Path(str(resources.files("p3eft.wireless") / "data" / "fhe_costs.json"))


@dataclass(frozen=True)
class ParameterSetCost:
    """Measured costs of one CKKS parameter set, in the units the wireless model uses."""

    name: str  # key in the cost file, e.g. "N8192"
    n: int  # ring dimension N
    security_bits: int  # privacy level P(N)
    slots: int  # values per ciphertext (N/2)
    ciphertext_bits: float
    encrypt_cycles: float  # per ciphertext, on the device
    server_cycles: float  # per ciphertext per product, on the server
    server_cycles_source: str  # "matvec_768x768_s" or "encrypt_s x 64 (estimate)"
    public_key_bytes: float | None = None


@dataclass(frozen=True)
class FheCostTable:
    """All parameter sets of a cost file, sorted by N, with the file's provenance."""

    sets: tuple[ParameterSetCost, ...]
    provenance: dict[str, Any]
    path: str

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    def index(self, name: str) -> int:
        """Position of a parameter set by name (``N8192``) or ring dimension (``8192``)."""
        for i, s in enumerate(self.sets):
            if name in (s.name, str(s.n)):
                return i
        raise CostFileError(f"parameter set {name!r} is not in the cost file {self.path} (has {self.names})")

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-set arrays (length = number of sets) for vectorised cost evaluation."""
        return {
            "n": np.array([s.n for s in self.sets], dtype=float),
            "security_bits": np.array([s.security_bits for s in self.sets], dtype=float),
            "slots": np.array([s.slots for s in self.sets], dtype=float),
            "ciphertext_bits": np.array([s.ciphertext_bits for s in self.sets]),
            "encrypt_cycles": np.array([s.encrypt_cycles for s in self.sets]),
            "server_cycles": np.array([s.server_cycles for s in self.sets]),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready description carried into every result (which file, measured where and how)."""
        return {"path": self.path, "provenance": self.provenance, "sets": [asdict(s) for s in self.sets]}


def _num(entry: dict[str, Any], key: str, where: str) -> float:
    val = entry.get(key)
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
        raise CostFileError(f"{where}: field {key!r} must be a positive number, got {val!r}")
    return float(val)


def parse_costs(raw: Any, path: str = "<memory>") -> FheCostTable:
    """Validate a decoded cost file and derive per-ciphertext bits and cycles."""
    if not isinstance(raw, dict):
        raise CostFileError(f"{path}: the cost file must be a JSON object")
    prov = raw.get("provenance")
    if not isinstance(prov, dict):
        raise CostFileError(f"{path}: missing 'provenance' object (command, date, machine.cpu_hz, ...)")
    machine = prov.get("machine")
    if not isinstance(machine, dict):
        raise CostFileError(f"{path}: provenance.machine must be an object with 'cpu_hz'")
    cpu_hz = _num(machine, "cpu_hz", f"{path}: provenance.machine")
    sets = []
    for key, entry in raw.items():
        if key == "provenance" or not key.startswith("N"):
            continue
        where = f"{path}: {key}"
        if not isinstance(entry, dict):
            raise CostFileError(f"{where} must be an object")
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise CostFileError(f"{where} lacks field(s) {missing}")
        n = int(_num(entry, "poly_modulus_degree", where))
        sec = int(_num(entry, "security_bits", where))
        enc_s = _num(entry, "encrypt_s", where)
        if "matvec_768x768_s" in entry and entry["matvec_768x768_s"] is not None:
            server_cycles = _num(entry, "matvec_768x768_s", where) * cpu_hz
            source = "matvec_768x768_s"
        else:
            server_cycles = enc_s * FALLBACK_MATVEC_PER_ENCRYPT * cpu_hz
            source = f"encrypt_s x {FALLBACK_MATVEC_PER_ENCRYPT:g} (estimate: matvec_768x768_s absent)"
        pk = entry.get("public_key_bytes")
        sets.append(
            ParameterSetCost(
                name=key,
                n=n,
                security_bits=sec,
                slots=int(_num(entry, "slots", where)),
                ciphertext_bits=8.0 * _num(entry, "ciphertext_bytes", where),
                encrypt_cycles=enc_s * cpu_hz,
                server_cycles=server_cycles,
                server_cycles_source=source,
                public_key_bytes=float(pk) if isinstance(pk, (int, float)) else None,
            )
        )
    if not sets:
        raise CostFileError(f"{path}: no parameter sets (keys like 'N8192')")
    sets.sort(key=lambda s: s.n)
    secs = [s.security_bits for s in sets]
    if any(b < a for a, b in zip(secs, secs[1:], strict=False)):
        raise CostFileError(f"{path}: security bits must not decrease with N, got {secs}")
    return FheCostTable(sets=tuple(sets), provenance=prov, path=path)


def load_costs(path: str | Path | None = None) -> FheCostTable:
    """Load and validate a cost file; ``None`` means the packaged default."""
    p = Path(path) if path is not None else default_cost_path()
    if not p.is_file():
        hint = " (run `p3eft bench fhe --json FILE` to measure one)"
        raise CostFileError(f"FHE cost file {p} does not exist{hint}")
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CostFileError(f"FHE cost file {p} is not valid JSON: {err}") from err
    return parse_costs(raw, str(p))


@dataclass(frozen=True)
class CostCurves:
    """Continuous cost curves in log2 N for the relaxation (ours).

    Piecewise-linear interpolation of log(value) against log2(N) through the measured points, so the
    curves are exact at every real parameter set. Relaxing a user's choice to the interval
    ``[N_lo, N_hi]`` of its remaining sets, the relaxation's infimum takes the curves' smallest costs
    and largest privacy over that interval; the Branch-and-Bound bound uses exactly that.
    """

    log2n: np.ndarray
    log_bits: np.ndarray
    log_enc: np.ndarray
    log_srv: np.ndarray
    privacy: np.ndarray

    @classmethod
    def fit(cls, table: FheCostTable) -> CostCurves:
        a = table.arrays()
        return cls(
            log2n=np.log2(a["n"]),
            log_bits=np.log(a["ciphertext_bits"] / a["slots"]),  # bits per value carried
            log_enc=np.log(a["encrypt_cycles"] / a["slots"]),
            log_srv=np.log(a["server_cycles"] / a["slots"]),
            privacy=a["security_bits"],
        )

    def at(self, n: float | np.ndarray) -> dict[str, np.ndarray]:
        """Per-value costs (bits, device cycles, server cycles) and privacy at a real-valued N."""
        x = np.log2(np.asarray(n, dtype=float))
        return {
            "bits_per_value": np.exp(np.interp(x, self.log2n, self.log_bits)),
            "enc_cycles_per_value": np.exp(np.interp(x, self.log2n, self.log_enc)),
            "server_cycles_per_value": np.exp(np.interp(x, self.log2n, self.log_srv)),
            "privacy_bits": np.interp(x, self.log2n, self.privacy),
        }

    def interval_extremes(self, lo: float, hi: float, grid: int = 65) -> dict[str, float]:
        """Smallest per-value costs and largest privacy of the curves over ``[lo, hi]``."""
        vals = self.at(np.exp2(np.linspace(np.log2(lo), np.log2(hi), grid)))
        return {
            "bits_per_value": float(vals["bits_per_value"].min()),
            "enc_cycles_per_value": float(vals["enc_cycles_per_value"].min()),
            "server_cycles_per_value": float(vals["server_cycles_per_value"].min()),
            "privacy_bits": float(vals["privacy_bits"].max()),
        }
