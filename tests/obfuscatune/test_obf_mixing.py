"""Fresh per-call row mixing and span filling (p3eft.obfuscatune.mixing): exact undoing, gradients,
conditioning, and the span guarantee that the subspace attack needs broken."""

import math

import pytest
import torch

from p3eft.errors import P3eftError
from p3eft.obfuscatune.mixing import (
    FILL_MARGIN,
    MIX_COND,
    GroupLayout,
    RowMix,
    SpanFill,
    draw_mix,
    parse_defence,
)

SECRET = b"s" * 32


def _check_exact(mix, n: int, width: int) -> torch.Tensor:
    """unmix(mix(X) W) = X W; the untrusted side's weight gradient Z^T dU equals X^T G (random rows get
    zero gradient); the backward is undone exactly. Returns the sent rows."""
    g0 = torch.Generator().manual_seed(n)
    x = torch.randn(n, width, dtype=torch.float64, generator=g0)
    w = torch.randn(width, 5, dtype=torch.float64, generator=g0)
    g = torch.randn(n, 5, dtype=torch.float64, generator=g0)
    z = mix.mix(x)
    assert z.shape == (mix.groups * mix.layout.size, width)
    assert torch.allclose(mix.unmix(z @ w), x @ w, atol=1e-10)
    du = mix.mix_grad(g)
    assert torch.allclose(z.T @ du, x.T @ g, atol=1e-9)
    assert torch.allclose(mix.unmix_grad(du @ w.T), g @ w.T, atol=1e-10)
    if isinstance(mix, RowMix):
        assert float(torch.linalg.cond(mix.m).max()) <= MIX_COND * (1 + 1e-9)
    else:  # SpanFill: C^T A = I, and A^T A well conditioned (unmixing adds rounding only)
        eye = torch.eye(mix.real, dtype=torch.float64).expand(mix.groups, -1, -1)
        assert torch.allclose(mix.c_mat.transpose(1, 2) @ mix.a_mat, eye, atol=1e-12)
        assert float(torch.linalg.cond(mix.a_mat.transpose(1, 2) @ mix.a_mat).max()) < 10
    return z


@pytest.mark.parametrize("n", [1, 7, 12])
def test_row_mixing_is_undone_exactly_and_keeps_lora_gradients(n):
    d = parse_defence("mix:4")
    lay = d.layout(n, 6)
    assert lay == GroupLayout(4, 1)
    mix = draw_mix(SECRET, "call-1", n, lay)
    _check_exact(mix, n, 6)
    assert not torch.allclose(mix.m, draw_mix(SECRET, "call-2", n, lay).m)  # fresh per call


@pytest.mark.parametrize("n", [1, 5, 40, 100, 300])
def test_span_filling_is_exact_and_spans_the_width_whatever_the_rows(n):
    """mix:4+fill: every call's sent rows span the whole width, even when the real rows are one row
    repeated (rank 1) -- the case a row-count rule would miss; every group holds a real row."""
    width = 48
    d = parse_defence("mix:4+fill")
    lay = d.layout(n, width)
    randoms = lay.groups(n) * lay.size - n
    assert randoms >= width + FILL_MARGIN
    assert lay.groups(n) * lay.real - n < lay.real  # padding never fills a whole group
    mix = draw_mix(SECRET, f"fill-{n}", n, lay)
    z = _check_exact(mix, n, width)
    assert int(torch.linalg.matrix_rank(z)) == width
    repeated = mix.mix(torch.randn(1, width, dtype=torch.float64).expand(n, width).contiguous())
    s = torch.linalg.svdvals(repeated)
    assert float(s[-1] / s[0]) > 1e-3  # full span, well conditioned (the attack's rank cut is 1e-5)
    assert d.accelerator_factor(n, width) == pytest.approx(mix.groups * lay.size / n)


@pytest.mark.parametrize("n", [5, 30])
def test_mixing_without_fill_leaves_a_short_call_a_proper_subspace(n):
    """Negative control: plain mix:4 on a short call sends rows spanning less than the width (what the
    subspace attack turns into equations)."""
    width = 48
    lay = parse_defence("mix:4").layout(n, width)
    z = draw_mix(SECRET, f"short-{n}", n, lay).mix(torch.randn(n, width, dtype=torch.float64))
    assert int(torch.linalg.matrix_rank(z)) == z.shape[0] < width


@pytest.mark.parametrize("n", [1, 8])
def test_span_filling_keeps_fp32_precision_on_one_row_calls(n):
    """A generation step (one row) at SmolLM2's width is sent as 1 real + 592 random rows: unmixing it in
    fp32 must stay at rounding level (the noise part cancels exactly in exact arithmetic)."""
    width = 576
    lay = parse_defence("mix:4+fill").layout(n, width)
    mix = draw_mix(SECRET, f"gen-{n}", n, lay)
    assert isinstance(mix, SpanFill) and lay.random >= (width + FILL_MARGIN) // n
    g0 = torch.Generator().manual_seed(1)
    x = torch.randn(n, width, generator=g0)
    w = torch.randn(width, 64, generator=g0) / width**0.5
    z = mix.mix(x)
    rel = float((mix.unmix(z @ w) - x @ w).abs().max() / (x @ w).abs().max())
    assert rel < 1e-5, rel
    # the rows sent hide the real row's size: every sent row is mostly noise of the real rows' RMS
    assert float(z.norm(dim=1).std() / z.norm(dim=1).mean()) < 0.2


def test_fill_layouts():
    d = parse_defence("mix:4+fill")
    need = 48 + FILL_MARGIN
    assert d.layout(16, 48) == GroupLayout(1, math.ceil(need / 16))  # short: one real row per group
    assert d.layout(2 * need + 5, 48) == GroupLayout(2, 1)  # medium: fewer real rows per group
    assert d.layout(4 * need, 48) == GroupLayout(4, 1)  # large batches: plain mix:4, nothing added
    assert parse_defence("mix:4").layout(16, 48) == GroupLayout(4, 1)
    assert d.accelerator_factor(4 * need, 48) == parse_defence("mix:4").accelerator_factor(4 * need, 48)
    # enclave multiply-accumulates per real element: full dense groups (K+1)^2/K to mix, K+1 to unmix; a
    # one-row mix:4 call pays for its whole group (25, and 4 x 5 to unmix the padding too); SpanFill 3(a+b) and a+b
    plain = parse_defence("mix:4")
    assert plain.mix_macs_per_element(400, 48) == 25 / 4 and plain.unmix_macs_per_element(400, 48) == 5
    assert plain.mix_macs_per_element(1, 48) == 25 and plain.unmix_macs_per_element(1, 48) == 20
    b = math.ceil(need / 16)
    assert d.mix_macs_per_element(16, 48) == 2 * (1 + b) and d.unmix_macs_per_element(16, 48) == 1 + b


def test_defence_specs():
    assert parse_defence("mix:4").k == 4 and not parse_defence("mix:4").fill
    assert parse_defence("mix:4+fill").fill and parse_defence("mix+fill").k == 4
    assert parse_defence("none").kind == "none"
    for spec in ["none", "mix:4", "mix:3+fill"]:
        assert parse_defence(spec).spec == spec
    for bad in ["mix:1", "mix:4+fil", "fill", "mix:4 + fill"]:
        with pytest.raises(P3eftError):
            parse_defence(bad)


def test_enclave_server_settings_check_the_defence():
    """``p3eft serve obfuscatune-enclave --settings`` refuses a bad defence before anything starts."""
    from p3eft.obfuscatune.net.roles import _settings

    assert _settings({"defence": "mix:4"}).defence == "mix:4"
    with pytest.raises(P3eftError, match="unknown defence"):
        _settings({"defence": "mix:4+fil"})
