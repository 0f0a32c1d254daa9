"""What one PrivTuner training step costs for each FHE candidate, read from a measured cost file.

Two kinds of file are accepted, both validated with clear :class:`CostFileError` messages:

* the **PrivTuner step-cost file** (``"kind": "p3eft.privtuner.step_costs"``) that
  ``p3eft privtuner bench --json`` writes: per parameter set, the measured per-example device and
  server CPU seconds, bytes up and down, refresh round trips and the one-off key upload. A candidate
  that the file measured is used as measured; any other candidate at a measured N is derived from it
  by the refresh-scaling model of :mod:`p3eft.wireless.derive` (ours, stated in ``source``);
* the **CKKS engine's file** (``p3eft bench fhe``, the packaged ``data/fhe_costs.json``): per-ciphertext
  CPU times and sizes, from which :mod:`p3eft.wireless.derive` builds a per-example step by a stated
  workload model (ours). This is the default until the PrivTuner bench file exists.

Cycles always come from CPU time: ``cycles = cpu_s x cpu_hz``, ``cpu_hz`` being the measuring
machine's clock from the file's provenance (or given explicitly). Wall-clock times are never used:
on a loaded machine they include time spent waiting for the CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.wireless.candidates import Candidate
from p3eft.wireless.errors import CostFileError, ScenarioError

STEP_KIND = "p3eft.privtuner.step_costs"
STEP_VERSION = 1

_PER_EXAMPLE_NUM = ("device_cpu_s", "server_cpu_s", "bytes_up", "bytes_down", "refresh_round_trips")
_PER_EXAMPLE_OPTIONAL = ("device_wall_s", "server_wall_s", "encryptions", "decryptions")
_ENGINE_REQUIRED = (
    "poly_modulus_degree",
    "coeff_mod_bit_sizes",
    "slots",
    "ciphertext_bytes",
    "ciphertext_seeded_bytes",
    "encrypt_cpu_s",
    "decrypt_cpu_s",
    "matvec_768x768_cpu_s",
    "public_key_bytes",
    "relin_keys_bytes",
    "galois_keys_bytes",
    "keygen_cpu_s",
)


def default_cost_path() -> Path:
    """The packaged cost file (see ``data/README.md`` for which file it is)."""
    return Path(str(resources.files("p3eft.wireless") / "data" / "fhe_costs.json"))


@dataclass(frozen=True)
class StepCost:
    """Per-example cost of one training step (forward + backward + update) under one candidate."""

    candidate: Candidate
    device_cpu_s: float  # data owner: encryptions, decryptions, refresh answers
    server_cpu_s: float  # model owner
    bytes_up: float  # data owner -> model owner, per example (seeded ciphertexts)
    bytes_down: float  # model owner -> data owner, per example (refresh requests, outputs)
    refresh_round_trips: float
    key_upload_bytes: float  # one-off per run: public + relinearisation + Galois keys
    source: str  # "measured (<file>)" or how it was derived (ours)

    def describe(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.describe(),
            "device_cpu_s": self.device_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "refresh_round_trips": self.refresh_round_trips,
            "key_upload_bytes": self.key_upload_bytes,
            "source": self.source,
        }


@dataclass(frozen=True)
class CostTable:
    """The step costs of one scenario's candidates (in the scenario's order), with cycles per second."""

    steps: tuple[StepCost, ...]
    cpu_hz: float
    kind: str
    path: str
    provenance: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [s.candidate.name for s in self.steps]

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-candidate arrays; cycles = CPU seconds x the measuring machine's clock."""
        st = self.steps
        return {
            "n": np.array([s.candidate.n for s in st], dtype=float),
            "security_bits": np.array([s.candidate.security_bits for s in st], dtype=float),
            "device_cycles": np.array([s.device_cpu_s for s in st]) * self.cpu_hz,
            "server_cycles": np.array([s.server_cpu_s for s in st]) * self.cpu_hz,
            "bits_up": 8.0 * np.array([s.bytes_up for s in st]),
            "bits_down": 8.0 * np.array([s.bytes_down for s in st]),
            "round_trips": np.array([s.refresh_round_trips for s in st], dtype=float),
            "key_bits": 8.0 * np.array([s.key_upload_bytes for s in st]),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready: which file, which kind, measured where, and every candidate's step cost."""
        return {
            "path": self.path,
            "kind": self.kind,
            "cpu_hz": self.cpu_hz,
            "cycles_from": "CPU time (process CPU seconds x cpu_hz)",
            "provenance": self.provenance,
            "candidates": [s.describe() for s in self.steps],
        }


@dataclass
class CostSource:
    """A validated cost file: measured entries keyed by (N, chain), resolvable for any candidate set."""

    kind: str  # "privtuner_step" or "engine"
    path: str
    provenance: dict[str, Any]
    cpu_hz: float
    entries: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = field(default_factory=dict)

    def ring_dimensions(self) -> list[int]:
        return sorted({n for n, _ in self.entries})

    def resolve(self, candidates: list[Candidate]) -> CostTable:
        """Step costs of every candidate: measured where the file has it, else derived (ours)."""
        from p3eft.wireless import derive

        steps = []
        for c in candidates:
            same_n = {bits: e for (n, bits), e in self.entries.items() if n == c.n}
            if not same_n:
                raise ScenarioError(
                    f"candidate {c.name}: the cost file {self.path} has no entry at N={c.n} "
                    f"(it has N in {self.ring_dimensions()}); costs are only derived within one N"
                )
            if self.kind == "engine":
                steps.append(derive.from_engine(c, same_n, self.path))
            elif c.coeff_modulus_bits in same_n:
                steps.append(_measured_step(c, same_n[c.coeff_modulus_bits], self.path))
            else:
                steps.append(derive.from_step_entry(c, same_n, self.path))
        return CostTable(tuple(steps), self.cpu_hz, self.kind, self.path, self.provenance)


def _measured_step(c: Candidate, e: dict[str, Any], path: str) -> StepCost:
    pe = e["per_example"]
    return StepCost(
        candidate=c,
        device_cpu_s=pe["device_cpu_s"],
        server_cpu_s=pe["server_cpu_s"],
        bytes_up=pe["bytes_up"],
        bytes_down=pe["bytes_down"],
        refresh_round_trips=pe["refresh_round_trips"],
        key_upload_bytes=e["key_upload_bytes"],
        source=f"measured ({path})",
    )


def _num(d: dict[str, Any], key: str, where: str, *, allow_zero: bool = False) -> float:
    val = d.get(key)
    ok = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
    if not ok or val < 0 or (val == 0 and not allow_zero):
        want = "a number >= 0" if allow_zero else "a positive number"
        raise CostFileError(f"{where}: field {key!r} must be {want}, got {val!r}")
    return float(val)


def _chain(d: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    bits = d.get(key)
    if not isinstance(bits, list) or not bits or not all(isinstance(b, int) and b > 0 for b in bits):
        raise CostFileError(f"{where}: field {key!r} must be a list of prime bit sizes, got {bits!r}")
    return tuple(bits)


def _cpu_hz(prov: dict[str, Any], where: str, cpu_hz: float | None) -> float:
    if cpu_hz is not None:
        if not (math.isfinite(cpu_hz) and cpu_hz > 0):
            raise CostFileError(f"cpu_hz must be a positive number, got {cpu_hz!r}")
        return float(cpu_hz)
    machine = prov.get("machine")
    if not isinstance(machine, dict) or "cpu_hz" not in machine:
        raise CostFileError(
            f"{where}: provenance.machine.cpu_hz is missing; cycles are CPU seconds x the measuring "
            "machine's clock, so give that clock (--cpu-hz HZ)"
        )
    return _num(machine, "cpu_hz", f"{where}: provenance.machine")


def _parse_step_file(raw: dict[str, Any], path: str, cpu_hz: float | None) -> CostSource:
    if raw.get("version") != STEP_VERSION:
        raise CostFileError(f"{path}: step-cost file version {raw.get('version')!r}, expected {STEP_VERSION}")
    prov = raw.get("provenance")
    if not isinstance(prov, dict):
        raise CostFileError(f"{path}: missing 'provenance' object (command, date, machine, repeats)")
    hz = _cpu_hz(prov, path, cpu_hz)
    sets = raw.get("param_sets")
    if not isinstance(sets, dict) or not sets:
        raise CostFileError(f"{path}: 'param_sets' must be a non-empty object of parameter sets")
    entries: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}
    for name, e in sets.items():
        where = f"{path}: param_sets.{name}"
        if not isinstance(e, dict):
            raise CostFileError(f"{where} must be an object")
        n = int(_num(e, "poly_modulus_degree", where))
        bits = _chain(e, "coeff_modulus_bits", where)
        pe = e.get("per_example")
        if not isinstance(pe, dict):
            raise CostFileError(f"{where}: missing 'per_example' object")
        clean = {
            k: _num(pe, k, f"{where}.per_example", allow_zero=k != "device_cpu_s") for k in _PER_EXAMPLE_NUM
        }
        for k in ("device_cpu_s", "server_cpu_s", "bytes_up"):
            if clean[k] <= 0:
                raise CostFileError(f"{where}.per_example: field {k!r} must be positive")
        key_bytes = _num(e, "key_upload_bytes", where)
        try:
            cand = Candidate(n, bits, name=str(name))
        except ScenarioError as err:
            raise CostFileError(f"{where}: {err}") from err
        if "security_bits" in e and int(e["security_bits"]) != cand.security_bits:
            raise CostFileError(
                f"{where}: security_bits {e['security_bits']} disagrees with the HE-standard label "
                f"{cand.security_bits} of log Q = {cand.log_q} at N={n}"
            )
        if "log_q" in e and int(e["log_q"]) != cand.log_q:
            raise CostFileError(
                f"{where}: log_q {e['log_q']} is not the sum of coeff_modulus_bits ({cand.log_q})"
            )
        entries[(n, bits)] = {"name": name, "per_example": clean, "key_upload_bytes": key_bytes}
    return CostSource("privtuner_step", path, prov, hz, entries)


def _parse_engine_file(raw: dict[str, Any], path: str, cpu_hz: float | None) -> CostSource:
    prov = raw.get("provenance")
    if not isinstance(prov, dict):
        raise CostFileError(f"{path}: missing 'provenance' object (command, date, machine.cpu_hz, ...)")
    hz = _cpu_hz(prov, path, cpu_hz)
    entries: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}
    for key, e in raw.items():
        if key == "provenance" or not key.startswith("N"):
            continue
        where = f"{path}: {key}"
        if not isinstance(e, dict):
            raise CostFileError(f"{where} must be an object")
        missing = [k for k in _ENGINE_REQUIRED if k not in e]
        if missing:
            raise CostFileError(f"{where} lacks field(s) {missing} (CPU times are required, not wall times)")
        clean = {k: _num(e, k, where) for k in _ENGINE_REQUIRED if k != "coeff_mod_bit_sizes"}
        bits = _chain(e, "coeff_mod_bit_sizes", where)
        clean["name"] = key
        entries[(int(clean["poly_modulus_degree"]), bits)] = {**clean, "coeff_mod_bit_sizes": bits}
    if not entries:
        raise CostFileError(f"{path}: no parameter sets (keys like 'N8192')")
    return CostSource("engine", path, prov, hz, entries)


def parse_costs(raw: Any, path: str = "<memory>", cpu_hz: float | None = None) -> CostSource:
    """Validate a decoded cost file of either kind (see the module docstring)."""
    if not isinstance(raw, dict):
        raise CostFileError(f"{path}: the cost file must be a JSON object")
    kind = raw.get("kind")
    if kind == STEP_KIND:
        return _parse_step_file(raw, path, cpu_hz)
    if kind is not None:
        raise CostFileError(
            f"{path}: unknown cost file kind {kind!r} (expected {STEP_KIND!r} or an engine file)"
        )
    return _parse_engine_file(raw, path, cpu_hz)


def load_costs(path: str | Path | None = None, cpu_hz: float | None = None) -> CostSource:
    """Load and validate a cost file; ``None`` means the packaged default (``data/README.md``)."""
    p = Path(path) if path is not None else default_cost_path()
    if not p.is_file():
        hint = " (write one with `p3eft privtuner bench --json FILE` or `p3eft bench fhe --json FILE`)"
        raise CostFileError(f"cost file {p} does not exist{hint}")
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CostFileError(f"cost file {p} is not valid JSON: {err}") from err
    return parse_costs(raw, str(p), cpu_hz)
