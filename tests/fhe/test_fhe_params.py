"""Parameter sets: security labels from the HomomorphicEncryption.org table, refusal below 128 bits."""

from __future__ import annotations

import pytest
import tenseal.sealapi as sealapi

from p3eft.errors import SecurityError, UnknownNameError
from p3eft.fhe.params import (
    HE_STANDARD_MAX_LOGQ,
    NAMED_SETS,
    InsecureParametersError,
    ParamSet,
    get_param_set,
    security_level,
)


def test_table_matches_seal_for_every_level():
    # SEAL ships the same standard table; an independent copy guards against typos in ours
    levels = {
        128: sealapi.SEC_LEVEL_TYPE.TC128,
        192: sealapi.SEC_LEVEL_TYPE.TC192,
        256: sealapi.SEC_LEVEL_TYPE.TC256,
    }
    for n, row in HE_STANDARD_MAX_LOGQ.items():
        for bits, limit in row.items():
            assert sealapi.CoeffModulus.MaxBitCount(n, levels[bits]) == limit


@pytest.mark.parametrize(
    ("n", "total", "label"),
    [
        (8192, 218, 128),
        (8192, 219, 0),
        (8192, 152, 192),
        (8192, 118, 256),
        (16384, 305, 192),
        (32768, 476, 256),
    ],
)
def test_security_level_boundaries(n, total, label):
    assert security_level(n, total) == label


def test_named_sets_labels_grow_with_n():
    labels = [get_param_set(name).security_bits for name in ("N8192", "N16384", "N32768")]
    assert labels == [128, 192, 256]
    for ps in NAMED_SETS.values():
        assert ps.total_bits <= HE_STANDARD_MAX_LOGQ[ps.poly_modulus_degree][ps.security_bits]


def test_sub_128_bit_set_is_refused():
    weak = ParamSet("weak", 8192, (60, 60, 60, 60))  # 240 bits > 218
    assert weak.security_bits == 0
    with pytest.raises(InsecureParametersError, match="below 128-bit"):
        weak.check_secure()
    assert issubclass(InsecureParametersError, SecurityError)
    with pytest.raises(InsecureParametersError):
        ParamSet.for_depth(8192, 4)  # 60 + 160 + 60 = 280 bits
    with pytest.raises(SecurityError):
        ParamSet.from_json(weak.to_json())


def test_for_depth_builds_the_chain_and_labels_it():
    ps = ParamSet.for_depth(32768, 4)
    assert ps.coeff_mod_bit_sizes == (60, 40, 40, 40, 40, 60)
    assert ps.depth == 4 and ps.security_bits == 256
    assert ParamSet.from_json(ps.to_json()) == ps


def test_unknown_set_name():
    with pytest.raises(UnknownNameError, match="N4096"):
        get_param_set("N4096")
