"""What one PrivTuner training step costs for each FHE candidate, read from a measured cost file.

Two kinds of file are accepted, both validated with clear :class:`CostFileError` messages:

* the **PrivTuner step-cost file** (``"kind": "p3eft.privtuner.step_costs"``) that
  ``p3eft privtuner bench --json`` writes: per parameter set, the measured per-example device and
  server CPU seconds, bytes up and down, refresh round trips and the one-off key upload. A candidate
  that the file measured is used as measured; any other candidate at a measured N is derived from it
  by the refresh-scaling model of :mod:`p3eft.wireless.derive` (ours, stated in ``source``). Several
  such files (e.g. one bench run per parameter set) combine into one source, each keeping its own
  provenance and clock, provided they measured the same model shape and no (N, chain) twice;
* the **CKKS engine's file** (``p3eft bench fhe``, the packaged ``data/fhe_costs.json``): per-ciphertext
  CPU times and sizes, from which :mod:`p3eft.wireless.derive` builds a per-example step by a stated
  workload model (ours). This is the default until the PrivTuner bench file exists.

Cycles always come from CPU time: ``cycles = cpu_s x cpu_hz``, ``cpu_hz`` being the measuring
machine's clock from the file's provenance (or given explicitly). Wall-clock times are never used:
on a loaded machine they include time spent waiting for the CPU.

Costs are never derived across N. A candidate at an N that a PrivTuner file did not measure is
*excluded*, with a one-line reason (:mod:`p3eft.wireless.availability`: PrivTuner cannot run there at
all, or it was just not measured), when it comes from the default candidate set; a scenario that names
its candidates explicitly gets a clear error instead (``resolve(..., strict=True)``).
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
    cpu_hz: float | None = None  # clock of the file that measured it (None: the table's)

    def describe(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.describe(),
            "cpu_hz": self.cpu_hz,
            "device_cpu_s": self.device_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "refresh_round_trips": self.refresh_round_trips,
            "key_upload_bytes": self.key_upload_bytes,
            "source": self.source,
        }


@dataclass(frozen=True)
class Excluded:
    """A default candidate left out because no cost of its N exists, with the one-line reason."""

    candidate: Candidate
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"candidate": self.candidate.name, "log_q": self.candidate.log_q, "reason": self.reason}


@dataclass(frozen=True)
class CostTable:
    """The step costs of one scenario's candidates (in the scenario's order, less the excluded ones),
    with cycles per second."""

    steps: tuple[StepCost, ...]
    cpu_hz: float
    kind: str
    path: str
    provenance: dict[str, Any]
    excluded: tuple[Excluded, ...] = ()

    @property
    def names(self) -> list[str]:
        return [s.candidate.name for s in self.steps]

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-candidate arrays; cycles = CPU seconds x the measuring machine's clock."""
        st = self.steps
        hz = np.array([s.cpu_hz if s.cpu_hz is not None else self.cpu_hz for s in st], dtype=float)
        return {
            "n": np.array([s.candidate.n for s in st], dtype=float),
            "security_bits": np.array([s.candidate.security_bits for s in st], dtype=float),
            "device_cycles": np.array([s.device_cpu_s for s in st]) * hz,
            "server_cycles": np.array([s.server_cpu_s for s in st]) * hz,
            "bits_up": 8.0 * np.array([s.bytes_up for s in st]),
            "bits_down": 8.0 * np.array([s.bytes_down for s in st]),
            "round_trips": np.array([s.refresh_round_trips for s in st], dtype=float),
            "key_bits": 8.0 * np.array([s.key_upload_bytes for s in st]),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready: which file(s), which kind, measured where, every candidate's step cost, and the
        default candidates left out (with why)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "cpu_hz": self.cpu_hz,
            "cycles_from": "CPU time (process CPU seconds x the measuring file's cpu_hz)",
            "provenance": self.provenance,
            "candidates": [s.describe() for s in self.steps],
            "excluded": [x.describe() for x in self.excluded],
        }

    def exclusion_note(self) -> str:
        """One line per excluded ring dimension (empty if none), for figures and printed results."""
        seen: dict[str, list[str]] = {}
        for x in self.excluded:
            seen.setdefault(x.reason, []).append(x.candidate.name)
        return "; ".join(f"excluded {', '.join(names)}: {why}" for why, names in seen.items())


@dataclass
class CostSource:
    """A validated cost file: measured entries keyed by (N, chain), resolvable for any candidate set."""

    kind: str  # "privtuner_step" or "engine"
    path: str
    provenance: dict[str, Any]
    cpu_hz: float
    entries: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # the measured model shape (PrivTuner files)

    def ring_dimensions(self) -> list[int]:
        return sorted({n for n, _ in self.entries})

    def for_scenario(self, scenario: Any) -> CostTable:
        """:meth:`resolve` for a scenario: lenient for the default candidate set, strict for one the
        scenario names explicitly (a named candidate that cannot be priced is an error)."""
        return self.resolve(scenario.candidate_list, strict=not scenario.uses_default_candidates)

    def _no_entry(self, c: Candidate) -> str:
        if self.kind != "privtuner_step":
            return f"the cost file {self.path} has no entry at N={c.n} (it has N in {self.ring_dimensions()})"
        from p3eft.wireless.availability import unmeasured_n

        scale = min(bits[1] for _, bits in self.entries)
        return unmeasured_n(c.n, scale, self.ring_dimensions()).reason

    def _cannot_run(self, c: Candidate, same_n: dict[tuple[int, ...], Any]) -> str:
        """Why PrivTuner cannot run an unmeasured chain at a measured N ('' if it can): its deepest
        phase must fit the chain's usable levels (:mod:`p3eft.wireless.availability`)."""
        if self.kind != "privtuner_step" or c.coeff_modulus_bits in same_n:
            return ""
        from p3eft.wireless.availability import chain_too_shallow

        return chain_too_shallow(c)

    def resolve(self, candidates: list[Candidate], strict: bool = True) -> CostTable:
        """Step costs of every candidate: measured where the file has it, else derived within its N
        (ours). A candidate at an N without any entry, or an unmeasured chain too shallow for
        PrivTuner's deepest phase, raises (``strict``) or is excluded with its reason; costs are never
        derived across N."""
        from p3eft.wireless import derive

        steps, excluded = [], []
        for c in candidates:
            same_n = {bits: e for (n, bits), e in self.entries.items() if n == c.n}
            why = self._no_entry(c) if not same_n else self._cannot_run(c, same_n)
            if why:
                if strict:
                    raise ScenarioError(f"candidate {c.name}: {why} (the scenario names this candidate)")
                excluded.append(Excluded(c, why))
                continue
            if self.kind == "engine":
                steps.append(derive.from_engine(c, same_n, self.path))
            elif c.coeff_modulus_bits in same_n:
                steps.append(_measured_step(c, same_n[c.coeff_modulus_bits]))
            else:
                steps.append(derive.from_step_entry(c, same_n, self.path))
        if not steps:
            raise ScenarioError(
                f"no candidate can be priced by {self.path}: " + "; ".join(x.reason for x in excluded)
            )
        return CostTable(tuple(steps), self.cpu_hz, self.kind, self.path, self.provenance, tuple(excluded))


def _measured_step(c: Candidate, e: dict[str, Any]) -> StepCost:
    pe = e["per_example"]
    path = e["path"]
    return StepCost(
        candidate=c,
        device_cpu_s=pe["device_cpu_s"],
        server_cpu_s=pe["server_cpu_s"],
        bytes_up=pe["bytes_up"],
        bytes_down=pe["bytes_down"],
        refresh_round_trips=pe["refresh_round_trips"],
        key_upload_bytes=e["key_upload_bytes"],
        source=f"measured ({path}, {e['name']})",
        cpu_hz=e["cpu_hz"],
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
        entries[(n, bits)] = {
            "name": name,
            "per_example": clean,
            "key_upload_bytes": key_bytes,
            "path": path,
            "cpu_hz": hz,
        }
    model = raw.get("model")
    return CostSource("privtuner_step", path, prov, hz, entries, model if isinstance(model, dict) else None)


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


def combine(sources: list[CostSource]) -> CostSource:
    """One source from several PrivTuner step-cost files, each entry keeping its file and clock.

    Refused (:class:`CostFileError`): an engine file among them, files that measured different model
    shapes (their steps would not price the same workload), or an (N, chain) measured twice.
    """
    if len(sources) == 1:
        return sources[0]
    if any(s.kind != "privtuner_step" for s in sources):
        raise CostFileError(
            "only PrivTuner step-cost files can be combined; "
            + ", ".join(s.path for s in sources if s.kind != "privtuner_step")
            + " is an engine file"
        )
    first = sources[0]
    entries: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}
    for s in sources:
        if s.model != first.model:
            raise CostFileError(
                f"{s.path} measured the model {s.model}, {first.path} measured {first.model}: "
                "step costs of different shapes do not price one workload"
            )
        for key, e in s.entries.items():
            if key in entries:
                raise CostFileError(
                    f"N={key[0]} chain {list(key[1])} is measured in both {entries[key]['path']} and {s.path}"
                )
            entries[key] = e
    files = [
        {"path": s.path, "param_sets": [e["name"] for e in s.entries.values()], "provenance": s.provenance}
        for s in sources
    ]
    return CostSource(
        "privtuner_step",
        " + ".join(s.path for s in sources),
        {"files": files},
        first.cpu_hz,
        entries,
        first.model,
    )


def load_costs(
    path: str | Path | list[str | Path] | tuple[str | Path, ...] | None = None, cpu_hz: float | None = None
) -> CostSource:
    """Load and validate a cost file, or several PrivTuner step-cost files (:func:`combine`);
    ``None`` (or an empty list) means the packaged default (``data/README.md``)."""
    if isinstance(path, (list, tuple)):
        if len(path) > 1:
            return combine([_load_one(p, cpu_hz) for p in path])
        path = path[0] if path else None
    return _load_one(path, cpu_hz)


def _load_one(path: str | Path | None, cpu_hz: float | None) -> CostSource:
    p = Path(path) if path is not None else default_cost_path()
    if not p.is_file():
        hint = " (write one with `p3eft privtuner bench --json FILE` or `p3eft bench fhe --json FILE`)"
        raise CostFileError(f"cost file {p} does not exist{hint}")
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CostFileError(f"cost file {p} is not valid JSON: {err}") from err
    return parse_costs(raw, str(p), cpu_hz)
