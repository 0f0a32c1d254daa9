"""Fixtures for the wireless tests.

``cost_file`` writes a synthetic PrivTuner step-cost file (the schema that `p3eft privtuner bench
--json` writes) into tmp_path; ``engine_cost_file`` a synthetic CKKS engine file (`p3eft bench fhe`).
Their numbers are test inputs of a plausible magnitude (not measurements, never reported); the shipped
results use the packaged file (src/p3eft/wireless/data/README.md says which one that is).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest


def _entry(
    n: int, bits: list[int], sec: int, dev: float, srv: float, up: float, down: float, trips: int, keys: float
) -> dict[str, Any]:
    return {
        "poly_modulus_degree": n,
        "coeff_modulus_bits": bits,
        "log_q": sum(bits),
        "security_bits": sec,
        "per_example": {
            "device_cpu_s": dev,
            "device_wall_s": 3.0 * dev,  # a loaded machine: wall time is not CPU time
            "server_cpu_s": srv,
            "server_wall_s": 2.0 * srv,
            "bytes_up": up,
            "bytes_down": down,
            "refresh_round_trips": trips,
            "encryptions": 100,
            "decryptions": 90,
        },
        "key_upload_bytes": keys,
        "keygen_cpu_s": 0.1,
    }


TEST_STEP_COSTS: dict[str, Any] = {
    "kind": "p3eft.privtuner.step_costs",
    "version": 1,
    "provenance": {
        "command": "test fixture (not a measurement)",
        "date": "2026-01-01",
        "machine": {"cpu": "test", "cpu_hz": 3.0e9},
        "repeats": 1,
        "load_avg": [0.0, 0.0, 0.0],
    },
    "model": {"name": "tiny", "layers": 2, "max_len": 64, "hidden": 384, "lora_rank": 4},
    "param_sets": {
        "N8192": _entry(8192, [60, 40, 40, 60], 128, 0.6, 5.0, 2.0e7, 2.5e7, 20, 4.6e7),
        # every default chain too shallow for PrivTuner's exp phase is given as measured (a derived one
        # would be excluded, see test_wireless_availability.py)
        "N8192b": _entry(8192, [45, 40, 40, 40, 45], 128, 0.55, 5.5, 1.6e7, 1.8e7, 12, 6.0e7),
        "N16384": _entry(16384, [60, 40, 40, 40, 40, 60], 192, 0.4, 7.0, 1.3e7, 9.0e6, 7, 1.7e8),
        "N32768": _entry(32768, [60, *([40] * 8), 60], 256, 0.45, 14.0, 1.6e7, 5.7e6, 3, 7.3e8),
    },
}

#: The measured chains only (fast exhaustive checks); the default scenario has six candidates.
MEASURED = ["N8192-d2", "N16384-d4", "N32768-d8"]


def _engine(n: int, bits: list[int], scale: float) -> dict[str, Any]:
    return {
        "poly_modulus_degree": n,
        "coeff_mod_bit_sizes": bits,
        "slots": n // 2,
        "ciphertext_bytes": int(330_000 * scale),
        "ciphertext_seeded_bytes": int(165_000 * scale),
        "encrypt_s": 0.008 * scale,  # wall times, deliberately 2x the CPU times
        "encrypt_cpu_s": 0.004 * scale,
        "decrypt_s": 0.002 * scale,
        "decrypt_cpu_s": 0.001 * scale,
        "matvec_768x768_s": 0.28 * scale,
        "matvec_768x768_cpu_s": 0.14 * scale,
        "public_key_bytes": int(460_000 * scale),
        "relin_keys_bytes": int(1_400_000 * scale),
        "galois_keys_bytes": int(45_000_000 * scale),
        "keygen_cpu_s": 0.02 * scale,
    }


TEST_ENGINE_COSTS: dict[str, Any] = {
    "provenance": {
        "command": "test fixture (not a measurement)",
        "date": "2026-01-01",
        "machine": {"cpu": "test", "cpu_hz": 3.0e9},
        "repeats": 1,
    },
    "N8192": _engine(8192, [60, 40, 40, 60], 1.0),
    "N16384": _engine(16384, [60, 40, 40, 40, 40, 60], 3.5),
    "N32768": _engine(32768, [60, *([40] * 8), 60], 12.0),
}


@pytest.fixture
def cost_file(tmp_path: Path) -> Path:
    p = tmp_path / "step_costs.json"
    p.write_text(json.dumps(TEST_STEP_COSTS))
    return p


@pytest.fixture
def engine_cost_file(tmp_path: Path) -> Path:
    p = tmp_path / "fhe_costs.json"
    p.write_text(json.dumps(TEST_ENGINE_COSTS))
    return p


@pytest.fixture
def costs_raw() -> dict[str, Any]:
    """A fresh copy of the test step-cost dict (to mutate in validation tests)."""
    return copy.deepcopy(TEST_STEP_COSTS)


@pytest.fixture
def engine_raw() -> dict[str, Any]:
    return copy.deepcopy(TEST_ENGINE_COSTS)
