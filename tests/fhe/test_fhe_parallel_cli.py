"""Process pool agrees with the single-process kernel; `p3eft bench fhe` writes the cost schema."""

from __future__ import annotations

import json

import numpy as np

from p3eft.cli.main import main
from p3eft.fhe import tensor
from p3eft.fhe.context import keygen
from p3eft.fhe.linalg import StaggeredMatrix
from p3eft.fhe.parallel import MatvecPool
from p3eft.fhe.params import get_param_set


def test_process_pool_matches_sequential(rng):
    weight = rng.normal(size=(64, 64)) / 8
    ps = get_param_set("N8192")
    mat = StaggeredMatrix(weight, ps.slots)
    ctx, sk = keygen(ps, mat.galois_steps())  # only the keys this kernel needs: workers load them
    xs = rng.uniform(-1, 1, (4, 64))
    inputs = [[tensor.encrypt(ctx, x, mat.input_layouts()[0])] for x in xs]
    with MatvecPool(ctx, weight, workers=2) as pool:
        outs = pool.map(inputs)
    assert len(outs) == 4
    for x, (y,) in zip(xs, outs, strict=True):
        assert y.context_id == ctx.context_id
        np.testing.assert_allclose(tensor.decrypt(sk, ctx, y), weight @ x, atol=1e-4)


def test_bench_fhe_writes_the_cost_schema(tmp_path):
    out = tmp_path / "costs.json"
    assert main(["bench", "fhe", "--json", str(out), "--sets", "N8192", "--quick", "--no-matvec"]) == 0
    data = json.loads(out.read_text())
    assert {"command", "date", "machine", "tenseal", "threads", "repeats"} <= set(data["provenance"])
    rec = data["N8192"]
    for key in (
        "poly_modulus_degree",
        "security_bits",
        "coeff_mod_bit_sizes",
        "slots",
        "ciphertext_bytes",
        "public_key_bytes",
        "relin_keys_bytes",
        "galois_keys_bytes",
        "secret_key_bytes",
        "keygen_s",
        "encrypt_s",
        "decrypt_s",
    ):
        assert key in rec, key
    assert rec["security_bits"] == 128 and rec["slots"] == 4096
    # a fresh top-level ciphertext: 2 polynomials x 3 primes x 8192 coefficients, compressed by SEAL
    assert 0.5 * 2 * 3 * 8192 * 8 < rec["ciphertext_bytes"] < 1.1 * 2 * 3 * 8192 * 8


def test_bench_fhe_unknown_set_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "fhe", "--json", str(tmp_path / "x.json"), "--sets", "N4096"]) == 2
    assert "unknown parameter set" in capsys.readouterr().err


def test_committed_cost_file_has_the_schema():
    from importlib import resources

    data = json.loads(resources.files("p3eft.wireless").joinpath("data/fhe_costs.json").read_text())
    for name in ("N8192", "N16384", "N32768"):
        rec = data[name]
        assert rec["poly_modulus_degree"] == int(name[1:])
        assert rec["ciphertext_bytes"] > 0 and rec["encrypt_s"] > 0
    assert "matvec_768x768_s" in data["N8192"] and "tenseal_mm_768x768_s" in data["N8192"]
