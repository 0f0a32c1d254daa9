"""Fixtures for the wireless tests.

``cost_file`` writes a small cost JSON in the schema of ``p3eft bench fhe`` into tmp_path. Its numbers
are test inputs of a plausible magnitude (not measurements, never reported); the shipped results use
the packaged file measured on the reference machine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

TEST_COSTS = {
    "provenance": {
        "command": "test fixture (not a measurement)",
        "date": "2026-01-01",
        "machine": {"cpu": "test", "cpu_hz": 3.0e9},
        "tenseal": "n/a",
        "threads": 1,
        "repeats": 1,
    },
    "N8192": {
        "poly_modulus_degree": 8192,
        "security_bits": 128,
        "coeff_mod_bit_sizes": [60, 40, 40, 60],
        "slots": 4096,
        "ciphertext_bytes": 330_000,
        "public_key_bytes": 330_000,
        "relin_keys_bytes": 1,
        "galois_keys_bytes": 1,
        "secret_key_bytes": 1,
        "keygen_s": 0.1,
        "encrypt_s": 0.006,
        "decrypt_s": 0.001,
        "matvec_768x768_s": 0.34,
    },
    "N16384": {
        "poly_modulus_degree": 16384,
        "security_bits": 192,
        "coeff_mod_bit_sizes": [60, 40, 40, 60],
        "slots": 8192,
        "ciphertext_bytes": 1_100_000,
        "public_key_bytes": 1,
        "relin_keys_bytes": 1,
        "galois_keys_bytes": 1,
        "secret_key_bytes": 1,
        "keygen_s": 0.4,
        "encrypt_s": 0.016,
        "decrypt_s": 0.003,
        "matvec_768x768_s": 0.9,
    },
    "N32768": {
        "poly_modulus_degree": 32768,
        "security_bits": 256,
        "coeff_mod_bit_sizes": [60, 40, 40, 60],
        "slots": 16384,
        "ciphertext_bytes": 4_200_000,
        "public_key_bytes": 1,
        "relin_keys_bytes": 1,
        "galois_keys_bytes": 1,
        "secret_key_bytes": 1,
        "keygen_s": 1.5,
        "encrypt_s": 0.045,
        "decrypt_s": 0.01,
        "matvec_768x768_s": 2.6,
    },
}


@pytest.fixture
def cost_file(tmp_path: Path) -> Path:
    p = tmp_path / "fhe_costs.json"
    p.write_text(json.dumps(TEST_COSTS))
    return p


@pytest.fixture
def costs_raw() -> dict[str, Any]:
    """A fresh copy of the test cost dict (to mutate in validation tests)."""
    return copy.deepcopy(TEST_COSTS)
