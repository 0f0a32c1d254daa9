"""Client-aided refresh: round-trip precision, level restored, and what the key holder can learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from scipy import stats

from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import ops, rawpoly, refresh, tensor
from p3eft.fhe.context import Ciphertext, Layout, LevelError

# today's slot-domain refresh gave 2.6e-6 at lambda=30 for |m| <= 4; the integer mask must do at least
# as well at lambda=40 (measured ~1e-8: nothing but fresh encryption noise)
REFRESH_TOL = 2.6e-6


def test_round_trip_restores_top_level_within_precision(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-4, 4, ctx.slots)
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    assert ctx.level(low) == ctx.top_level - 1
    assert refresh.DEFAULT_LAMBDA >= 40
    fresh = refresh.refresh_local(ctx, sk, low, bound=4.0, lam=40)
    assert ctx.level(fresh) == ctx.top_level
    assert fresh.seal.scale == low.seal.scale  # the scale travels unchanged (no relabelling)
    err = np.max(np.abs(tensor.decrypt(sk, ctx, fresh) - x))
    assert err <= REFRESH_TOL
    # the refreshed ciphertext supports another multiplication
    again = ops.mul_plain(ctx, fresh, 0.5)
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, again), x / 2, atol=REFRESH_TOL)


def test_round_trip_over_bytes(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-1, 1, 64)
    masker = refresh.RefreshMasker(ctx, bound=1.0)
    masked = masker.mask(ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0))
    answer = refresh.refresh_respond_bytes(ctx, sk, ctx.ciphertext_to_bytes(masked))
    out = masker.unmask(ctx.ciphertext_from_bytes(answer))
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, out), x, atol=REFRESH_TOL)
    with pytest.raises(SecurityError, match="without a pending mask"):
        masker.unmask(out)


def test_respond_with_view_for_an_audit(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-4, 4, ctx.slots)
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    masker = refresh.RefreshMasker(ctx, bound=4.0)
    answer, view = refresh.refresh_answer(ctx, sk, masker.mask(low), with_view=True)
    fresh = ctx.ciphertext_from_bytes(answer)
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, masker.unmask(fresh)), x, atol=REFRESH_TOL)
    norm = refresh.normalised_view(view, 4.0, low.seal.scale)
    assert np.all(np.abs(norm) <= 1.0) and stats.kstest(norm, "uniform", args=(-1, 2)).pvalue > 1e-4


def test_the_refresh_floor_of_a_parameter_set_equals_that_of_its_keys(n8192):
    """refresh_floor (no keys: what a model owner checks its model against when it is configured) gives
    min_refresh_level's answer for every bound and lambda, including ones no level can hold."""
    ctx, _ = n8192
    floors = set()
    for bound in (1.0, 4.0, 2.0**20, 2.0**40):
        for lam in (30, 40, 60):
            try:
                want = refresh.min_refresh_level(ctx, bound, lam)
            except LevelError:
                with pytest.raises(LevelError, match="no level"):
                    refresh.refresh_floor(ctx.params, bound, lam)
                floors.add(None)
                continue
            assert refresh.refresh_floor(ctx.params, bound, lam) == want
            floors.add(want)
    assert len(floors) >= 3  # the cases reach different floors, and one no level holds


def test_lambda_below_30_bad_bound_and_too_low_level_are_refused(n8192):
    ctx, _ = n8192
    with pytest.raises(SecurityError):
        refresh.RefreshMasker(ctx, bound=1.0, lam=20)
    with pytest.raises(ProtocolError):
        refresh.RefreshMasker(ctx, bound=float("nan"))
    assert refresh.min_refresh_level(ctx, 4.0, 40) == 1
    bottom = ops.drop_to(ctx, tensor.encrypt(ctx, np.ones(4)), 0)
    with pytest.raises(LevelError, match="refresh"):
        refresh.RefreshMasker(ctx, bound=4.0).mask(bottom)


def test_mask_is_an_exact_integer_polynomial_of_the_stated_width(n8192):
    # the key holder's view is exactly p + e + r: r on the integers of [-W, W), e the fresh encryption
    # noise of the re-randomisation (a few thousand), nothing rounded
    ctx, sk = n8192
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, np.full(ctx.slots, 3.0)), 1.0)
    plain = refresh.key_holder_coefficients(ctx, sk, low)
    masker = refresh.RefreshMasker(ctx, bound=4.0)
    view = refresh.key_holder_coefficients(ctx, sk, masker.mask(low))
    r = masker._mask.to_ints()
    fresh_noise = view - plain - r
    assert max(abs(int(v)) for v in fresh_noise) < 2**16
    assert any(int(v) != 0 for v in fresh_noise)  # the re-randomisation did add a fresh encryption
    width = masker.mask_width(low.seal.scale)
    assert width >= 2**40 * refresh.coefficient_bound(4.0, low.seal.scale)
    assert all(-width <= int(v) < width for v in r)
    assert max(abs(int(v)) for v in plain) <= refresh.coefficient_bound(4.0, low.seal.scale)
    # an integer mask uniform on a power-of-two width: every low bit is a fair coin
    low_bits = np.array([int(v) & 0xFF for v in view - plain])
    assert stats.chisquare(np.bincount(low_bits, minlength=256)).pvalue > 1e-6


def test_request_travels_at_the_lowest_refresh_level_and_the_answer_is_seeded(n8192, rng):
    # the request is dropped to the lowest level that holds p + r (exact: same view, fewer primes);
    # the answer is a seeded symmetric encryption, about half the bytes of the ciphertext it loads to
    ctx, sk = n8192
    x = rng.uniform(-4, 4, ctx.slots)
    top = tensor.encrypt(ctx, x)
    assert ctx.level(top) > refresh.min_refresh_level(ctx, 4.0)
    masker = refresh.RefreshMasker(ctx, bound=4.0)
    masked = masker.mask(top)
    assert ctx.level(masked) == refresh.min_refresh_level(ctx, 4.0)
    answer, _ = refresh.refresh_answer(ctx, sk, masked)
    fresh = ctx.ciphertext_from_bytes(answer)
    assert len(answer) < 0.6 * len(ctx.ciphertext_to_bytes(fresh))
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, masker.unmask(fresh)), x, atol=REFRESH_TOL)


def test_rawpoly_reads_every_word_as_the_binding_does(n8192, rng):
    # the fast reader (SEAL's own serialisation, decompressed) against one pybind call per word
    ctx, sk = n8192
    ct = ops.mul_plain(ctx, tensor.encrypt(ctx, rng.uniform(-1, 1, ctx.slots)), 1.0)
    pt = sk.decrypt_plaintext(ctx, ct)
    for obj in (ct.seal, pt):
        arr = obj.dyn_array()
        slow = np.fromiter((arr[i] for i in range(arr.size())), dtype=np.uint64, count=arr.size())
        np.testing.assert_array_equal(rawpoly.read_words(obj), slow)
        np.testing.assert_array_equal(rawpoly.read_words(obj, 100), slow[:100])
        with pytest.raises(ValueError, match="words"):
            rawpoly.read_words(obj, arr.size() + 1)


def test_integer_polynomial_survives_the_ntt_plaintext_exactly(n8192, rng):
    ctx, _ = n8192
    top = ctx.top_level
    q = math.prod(rawpoly.primes_at(ctx, top))
    vals = np.array(
        [int(v) for v in rng.integers(-(2**62), 2**62, ctx.params.poly_modulus_degree)], dtype=object
    )
    vals[:3] = [q // 2, -(q // 2) + 1, 0]
    pt = rawpoly.ntt_plaintext_from_residues(
        ctx, top, rawpoly.residues(vals, rawpoly.primes_at(ctx, top)), ctx.params.scale
    )
    assert pt.is_ntt_form() and ctx.level(pt) == top and pt.scale == ctx.params.scale
    assert list(rawpoly.plaintext_coefficients(ctx, pt, top)) == list(vals)


def test_rawpoly_crt_round_trip():
    primes = [1152921504606748673, 1099511480321, 1099511922689]
    q = math.prod(primes)
    vals = np.array([0, 1, -1, q // 2, -(q // 2) + 1, 123456789123456789123], dtype=object)
    back = rawpoly.centred(rawpoly.residues(vals, primes), primes)
    assert list(back) == list(vals)


class _NarrowMasker(refresh.RefreshMasker):
    """Negative control: a mask of a chosen (too small) width."""

    width: int = 1

    def mask_width(self, scale: float) -> int:
        return self.width


def _poly_ciphertext(ctx, coeff: int):
    """A level-1 ciphertext whose plaintext polynomial has every coefficient equal to ``coeff``."""
    zero = sealapi.Ciphertext(ctx.seal)
    ctx.encrypt_zero(zero, ctx.top_level - 1, ctx.params.scale)
    poly = np.full(ctx.params.poly_modulus_degree, coeff, dtype=object)
    return Ciphertext(rawpoly.add_integer_poly(ctx, zero, poly), ctx.context_id, Layout(1))


def _coefficient_views(ctx, sk, ct, masker_factory, repeats):
    out = []
    for _ in range(repeats):
        masker = masker_factory()
        c = refresh.key_holder_coefficients(ctx, sk, masker.mask(ct))
        out.append(np.array([float(v) for v in c]) / masker.mask_width(ct.seal.scale))
    return np.concatenate(out)


def test_key_holder_coefficients_do_not_depend_on_the_message(n8192):
    # two plaintext polynomials at opposite ends of the covered range: every coefficient +B*scale or
    # -B*scale (B = 4); the key holder's coefficient views are uniform and indistinguishable
    ctx, sk = n8192
    top = int(4 * ctx.params.scale)
    c1, c2 = _poly_ciphertext(ctx, top), _poly_ciphertext(ctx, -top)
    v1 = _coefficient_views(ctx, sk, c1, lambda: refresh.RefreshMasker(ctx, 4.0), 2)
    v2 = _coefficient_views(ctx, sk, c2, lambda: refresh.RefreshMasker(ctx, 4.0), 2)
    assert stats.ks_2samp(v1, v2).pvalue > 1e-4
    assert stats.kstest(v1, "uniform", args=(-1, 2)).pvalue > 1e-4

    # negative control: a mask only 16 times wider than the coefficients is told apart by the same test
    def narrow():
        m = _NarrowMasker(ctx, 4.0)
        m.width = 16 * top
        return m

    n1 = _coefficient_views(ctx, sk, c1, narrow, 2)
    n2 = _coefficient_views(ctx, sk, c2, narrow, 2)
    assert stats.ks_2samp(n1, n2).pvalue < 1e-6


# --- the distinguisher of issue 9 -----------------------------------------------------------------
# The key holder decodes the masked slots, subtracts a coarse estimate on a grid delta (homomorphically,
# as an encoded plaintext), decodes the small remainder and guesses the message from it modulo delta.
# Messages 0 and delta/2 in every slot (real and imaginary parts); delta = the grid a double mask of
# width 2^lambda * B had, 2^(lambda + 1 + log2 B - 53).


def _distinguisher_hits(ctx, sk, message: complex, delta: float, masker_factory, repeats: int):
    """(guesses of "delta/2", samples): guess delta/2 when the remainder mod delta is in [delta/4, 3delta/4)."""
    pt = sealapi.Plaintext()
    ctx.encoder.encode(message, ctx.parms_id(ctx.top_level), ctx.params.scale, pt)
    base = tensor.encrypt(ctx, np.zeros(ctx.slots))
    ctx.evaluator.add_plain_inplace(base.seal, pt)
    low = ops.mul_plain(ctx, base, 1.0)
    lvl = ctx.level(low)
    hits = samples = 0
    for _ in range(repeats):
        masked = masker_factory().mask(low)
        coarse = np.asarray(ctx.encoder.decode_complex(sk.decrypt_plaintext(ctx, masked)))
        est = np.round(coarse / delta) * delta
        est_pt = sealapi.Plaintext()
        ctx.encoder.encode(est.tolist(), ctx.parms_id(lvl), masked.seal.scale, est_pt)
        ctx.evaluator.sub_plain_inplace(masked.seal, est_pt)
        rem = np.asarray(ctx.encoder.decode_complex(sk.decrypt_plaintext(ctx, masked)))
        frac = np.concatenate([np.mod(rem.real, delta), np.mod(rem.imag, delta)]) / delta
        hits += int(np.count_nonzero((frac >= 0.25) & (frac < 0.75)))
        samples += frac.size
    return hits, samples


def _advantage(ctx, sk, delta, factory, repeats):
    h0, n0 = _distinguisher_hits(ctx, sk, 0.0, delta, factory, repeats)
    h1, n1 = _distinguisher_hits(ctx, sk, complex(delta / 2, delta / 2), delta, factory, repeats)
    adv = h1 / n1 - h0 / n0
    sigma = math.sqrt(0.25 / n0 + 0.25 / n1)  # standard error of the advantage when there is none
    return adv, sigma


@pytest.mark.slow
def test_distinguisher_finds_no_advantage(n8192):
    ctx, sk = n8192
    bound, lam = 4.0, refresh.DEFAULT_LAMBDA
    delta = 2.0 ** (lam + 1 + math.log2(bound) - 53)
    adv, sigma = _advantage(ctx, sk, delta, lambda: refresh.RefreshMasker(ctx, bound, lam), 1500)
    # power: an advantage of 1e-3 sits 5 standard errors out, beyond the 4-sigma acceptance band
    assert 4.9 * sigma <= 1e-3
    assert abs(adv) < 4 * sigma, f"advantage {adv:.2e} (sigma {sigma:.1e})"


def test_distinguisher_detects_a_too_narrow_mask(n8192):
    ctx, sk = n8192
    delta = 2.0**-10

    def narrow():
        m = _NarrowMasker(ctx, 4.0)
        m.width = int(
            delta * ctx.params.scale / 128
        )  # slot spread ~0.3 delta: too narrow to hide m mod delta
        return m

    adv, sigma = _advantage(ctx, sk, delta, narrow, 8)
    assert adv > 10 * sigma and adv > 0.05


def test_key_holder_refuses_a_request_beyond_the_exact_lift(n8192):
    # a hostile or broken evaluator sends a polynomial near Q/2 of its level: the fast base extension
    # cannot lift it exactly, so the key holder refuses instead of answering a wrong polynomial
    ctx, sk = n8192
    q = math.prod(rawpoly.primes_at(ctx, ctx.top_level - 1))
    bad = _poly_ciphertext(ctx, q // 2 - 5)
    with pytest.raises(ProtocolError, match="out of range"):
        refresh.refresh_answer(ctx, sk, bad)
    fine = _poly_ciphertext(ctx, q // 8)  # far beyond any bound, yet liftable: answered exactly
    answer, view = refresh.refresh_answer(ctx, sk, fine, with_view=True)
    assert max(abs(int(v) - q // 8) for v in view) < 2**16  # the polynomial plus encryption noise
    back = refresh.key_holder_coefficients(ctx, sk, ops.drop_to(ctx, ctx.ciphertext_from_bytes(answer), 1))
    assert max(abs(int(b) - int(v)) for b, v in zip(back, view, strict=True)) < 2**16  # fresh noise only


def _second_polynomial(ct: Ciphertext) -> np.ndarray:
    words = rawpoly.read_words(ct.seal)
    return words[words.size // 2 :]


def _guess_request(ctx, x_ct: Ciphertext, weights: np.ndarray, level: int) -> np.ndarray:
    """The key holder redoes a guessed computation on the ciphertext it made itself."""
    return _second_polynomial(ops.drop_to(ctx, ops.mul_plain(ctx, x_ct, weights), level))


@pytest.mark.parametrize("rerandomised", [True, False])
def test_key_holder_cannot_test_guesses_of_the_weights_on_the_second_polynomial(
    n8192, rng, monkeypatch, rerandomised
):
    """The key holder encrypted x itself, so it knows x's ciphertext whole. The evaluator's products
    are deterministic, so without re-randomisation the request's second polynomial equals the one the
    key holder computes for the right guess of the evaluator's secret weights, and for no other: it
    tells two candidate weight vectors apart every time (the negative control). Re-randomised, the
    request matches neither guess."""
    ctx, sk = n8192
    if not rerandomised:
        monkeypatch.setattr(refresh.ops, "rerandomise", lambda ctx, ct: ct)
    x_ct = tensor.encrypt(ctx, rng.uniform(-1, 1, ctx.slots))
    w_secret, w_other = rng.uniform(-1, 1, ctx.slots), rng.uniform(-1, 1, ctx.slots)
    masked = refresh.RefreshMasker(ctx, bound=4.0).mask(ops.mul_plain(ctx, x_ct, w_secret))
    seen = _second_polynomial(masked)
    right = _guess_request(ctx, x_ct, w_secret, ctx.level(masked))
    wrong = _guess_request(ctx, x_ct, w_other, ctx.level(masked))
    assert not np.array_equal(seen, wrong)
    if rerandomised:
        assert not np.array_equal(seen, right)
        assert np.mean(seen == right) < 1e-3  # not even partly: a fresh, unrelated polynomial
    else:
        assert np.array_equal(seen, right)


def test_rerandomise_keeps_the_message_and_refuses_an_unrelinearised_ciphertext(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-4, 4, ctx.slots)
    ct = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    again = ops.rerandomise(ctx, ct)
    assert ctx.level(again) == ctx.level(ct) and again.seal.scale == ct.seal.scale
    assert not np.array_equal(_second_polynomial(again), _second_polynomial(ct))
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, again), x, atol=REFRESH_TOL)
    three = sealapi.Ciphertext(ctx.seal)
    ctx.evaluator.multiply(ct.seal, ct.seal, three)  # not relinearised: three polynomials
    with pytest.raises(ProtocolError, match="2 polynomials"):
        ops.rerandomise(ctx, Ciphertext(three, ct.context_id, ct.layout))
