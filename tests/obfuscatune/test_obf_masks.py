"""Masks: the four actions agree with the dense matrix; CSPRNG draws are reproducible and distinct."""

import pytest
import torch
from scipy import stats

from p3eft.errors import P3eftError
from p3eft.obfuscatune.masks import CsprngStream, kron_factors, parse_masks

SPECS = ["orthogonal", "cond:100", "naive", "kron:4", "blockperm:8"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n", [48, 128])
def test_mask_actions_match_dense_matrix(spec, n):
    fam = parse_masks(spec).with_chunk(32 if n == 128 else None)
    m = fam.make(b"k" * 32, "label", n, torch.float64)
    r = m.matrix()
    r_inv = torch.linalg.inv(r)
    x = torch.randn(5, 2, n, dtype=torch.float64)
    assert torch.allclose(m.right(x), x @ r, atol=1e-10)
    assert torch.allclose(m.right_inv(x), x @ r_inv, atol=1e-8)
    assert torch.allclose(m.right_t(x), x @ r.T, atol=1e-10)
    assert torch.allclose(m.right_inv_t(x), x @ r_inv.T, atol=1e-8)
    assert m.macs_per_row() == fam.macs_per_row(n)
    cond = torch.linalg.cond(r).item()
    if spec in ("orthogonal", "kron:4", "blockperm:8"):
        assert m.orthogonal and cond == pytest.approx(1.0, abs=1e-9)
    elif spec == "cond:100":
        assert cond == pytest.approx(100.0, rel=1e-6)
    else:
        assert cond > 10


def test_structured_masks_are_cheaper_than_dense():
    n = 768
    dense = parse_masks("orthogonal").macs_per_row(n)
    assert parse_masks("kron").macs_per_row(n) < dense / 10
    assert parse_masks("blockperm:32").macs_per_row(n) == n * 32
    assert (
        parse_masks("kron").randomness(n)["continuous_dof"]
        < parse_masks("orthogonal").randomness(n)["continuous_dof"]
    )


def test_draws_depend_on_secret_and_label_only():
    fam = parse_masks("orthogonal")
    a = fam.make(b"s" * 32, "x", 16, torch.float64).matrix()
    assert torch.equal(a, fam.make(b"s" * 32, "x", 16, torch.float64).matrix())
    assert not torch.allclose(a, fam.make(b"s" * 32, "y", 16, torch.float64).matrix())
    assert not torch.allclose(a, fam.make(b"t" * 32, "x", 16, torch.float64).matrix())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_csprng_gaussians_look_gaussian(dtype):
    z = CsprngStream(b"q" * 32, "g").normal(200_001, dtype=dtype)
    assert z.dtype == dtype and z.shape == (200_001,)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    # Kolmogorov-Smirnov against N(0, 1); the control, a Gaussian 2% too wide, is rejected at this n
    assert stats.kstest(z.double().numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(1.02 * z.double().numpy(), "norm").pvalue < 1e-3


def test_csprng_gaussians_are_reproducible_and_fresh():
    a = CsprngStream(b"q" * 32, "g").normal(3, 5, dtype=torch.float32)
    assert torch.equal(a, CsprngStream(b"q" * 32, "g").normal(3, 5, dtype=torch.float32))
    assert not torch.equal(a, CsprngStream(b"q" * 32, "h").normal(3, 5, dtype=torch.float32))
    with pytest.raises(P3eftError):
        CsprngStream(b"q" * 32, "g").normal(4, dtype=torch.int64)


def test_kron_factors():
    assert kron_factors(768, 16) == [8, 8, 12]
    assert all(f <= 16 for f in kron_factors(3072, 16))
    assert kron_factors(7, 4) == [7]


@pytest.mark.parametrize("bad", ["orthogonl", "cond:0.5", "kron:1", ""])
def test_bad_specs_are_user_errors(bad):
    with pytest.raises(P3eftError):
        parse_masks(bad)
