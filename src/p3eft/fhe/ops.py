"""Homomorphic arithmetic with level and scale management.

Scale policy (ours): every ciphertext carries its *true* scale (SEAL's ``scale`` field), never a
relabelled one. A ciphertext product of scales s_a, s_b comes back at s_a * s_b / q_l; calling that
2^40 would add the relative error |q_l / 2^40 - 1| per product (:func:`scale_drift`, up to ~1e-5),
so we keep it. Plaintext operands of a multiplication are encoded at q_l * target / s_in, so a plaintext
product lands exactly on the scale the caller wants (by default the input's): the correction is folded
into the plaintext, at no cost in levels. Additions need equal scales: when the operands sit at
different levels, the higher one is brought onto the other's scale by a product with 1 that costs
nothing (it has levels to spare); at the same level with different scales, the same product costs
one level (and at level 0 the addition is refused). Never a relabelling: that would cost the relative
gap in accuracy (minilm-l6's FFN residual met a LayerNorm output whose Newton iterations had moved
its scale 0.55% off, and the relabelled sum was 1.05 off on values of 220). Operands at different
levels are mod-switched down to the lower one before they meet.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sealapi

from p3eft.errors import ProtocolError
from p3eft.fhe import galois
from p3eft.fhe.context import Ciphertext, CkksContext, Layout, LevelError


def prime_at(ctx: CkksContext, level: int) -> float:
    """The prime q_level that a rescale from ``level`` removes."""
    data = ctx.seal.get_context_data(ctx.parms_id(level))
    return float(data.parms().coeff_modulus()[-1].value())


def scale_drift(ctx: CkksContext) -> float:
    """Largest relative gap between a scale prime and the nominal scale: what relabelling a ct x ct
    product as 2^40 would cost per product (we track the true scale instead)."""
    return max(abs(prime_at(ctx, lvl) / ctx.params.scale - 1.0) for lvl in range(1, ctx.top_level + 1))


def _new(ctx: CkksContext) -> sealapi.Ciphertext:
    return sealapi.Ciphertext(ctx.seal)


def clone_raw(ctx: CkksContext, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
    """A deep copy of a SEAL ciphertext. The binding has no copy constructor, so negate twice (exact
    modular arithmetic, O(N) per prime)."""
    out = _new(ctx)
    ctx.evaluator.negate(ct, out)
    ctx.evaluator.negate_inplace(out)
    return out


def copy(ctx: CkksContext, a: Ciphertext, layout: Layout | None = None) -> Ciphertext:
    return Ciphertext(clone_raw(ctx, ctx.check(a).seal), a.context_id, layout or a.layout)


def need_levels(ctx: CkksContext, a: Ciphertext, k: int) -> None:
    lvl = ctx.level(a)
    if lvl < k:
        raise LevelError(f"operation needs {k} level(s), ciphertext is at level {lvl}: refresh it first")


def drop_to(ctx: CkksContext, a: Ciphertext, level: int) -> Ciphertext:
    """Mod-switch down to ``level`` (no noise cost, no scale change)."""
    cur = ctx.level(a)
    if cur < level:
        raise LevelError(f"cannot raise a ciphertext from level {cur} to {level} (that needs a refresh)")
    if cur == level:
        return a
    out = _new(ctx)
    ctx.evaluator.mod_switch_to(a.seal, ctx.parms_id(level), out)
    return Ciphertext(out, a.context_id, a.layout)


def align(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
    """Bring both operands to the lower level (mod-switching; scales unchanged)."""
    ctx.check(a)
    ctx.check(b)
    lvl = min(ctx.level(a), ctx.level(b))
    return drop_to(ctx, a, lvl), drop_to(ctx, b, lvl)


def same_scale(x: float, y: float, rel: float = 1e-12) -> bool:
    return abs(x - y) <= rel * max(abs(x), abs(y))


def relabel(ctx: CkksContext, a: Ciphertext, scale: float) -> Ciphertext:
    """A copy of ``a`` that SEAL believes has ``scale`` (the value read changes by the ratio)."""
    out = clone_raw(ctx, a.seal)
    out.scale = scale
    return Ciphertext(out, a.context_id, a.layout)


def align_scales(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
    """Equal levels and equal scales for an addition (see the module's scale policy)."""
    ctx.check(a)
    ctx.check(b)
    sa, sb = a.seal.scale, b.seal.scale
    if not same_scale(sa, sb):
        la, lb = ctx.level(a), ctx.level(b)
        if lb > la:
            b = mul_plain(ctx, b, 1.0, scale=sa)
        elif la > 0:  # the higher one, or at one level a (one level down; ``align`` drops b after it)
            a = mul_plain(ctx, a, 1.0, scale=sb)
        else:
            raise LevelError(
                f"cannot add ciphertexts at level 0 whose scales differ by {abs(sa / sb - 1):.1e} "
                "(bringing one onto the other's scale needs a level)"
            )
    a, b = align(ctx, a, b)
    if a.seal.scale != b.seal.scale:  # equal up to rounding of the last bits
        b = relabel(ctx, b, a.seal.scale)
    return a, b


def add(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    a, b = align_scales(ctx, a, b)
    out = _new(ctx)
    ctx.evaluator.add(a.seal, b.seal, out)
    return Ciphertext(out, a.context_id, a.layout)


def sub(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    a, b = align_scales(ctx, a, b)
    out = _new(ctx)
    ctx.evaluator.sub(a.seal, b.seal, out)
    return Ciphertext(out, a.context_id, a.layout)


def add_plain(ctx: CkksContext, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
    """a + values (slot vector or scalar), no level cost."""
    ctx.check(a)
    pt = ctx.encode(values, ctx.level(a), a.seal.scale)
    out = _new(ctx)
    ctx.evaluator.add_plain(a.seal, pt, out)
    return Ciphertext(out, a.context_id, a.layout)


def negate(ctx: CkksContext, a: Ciphertext) -> Ciphertext:
    out = _new(ctx)
    ctx.evaluator.negate(ctx.check(a).seal, out)
    return Ciphertext(out, a.context_id, a.layout)


def rescale(
    ctx: CkksContext,
    raw: sealapi.Ciphertext,
    context_id: bytes,
    layout: Layout,
    target: float | None = None,
) -> Ciphertext:
    """Rescale by the last prime. The scale stays the true one; ``target`` (what a plaintext product
    was encoded to reach) snaps away the last-bit rounding of the double arithmetic, nothing more."""
    ctx.evaluator.rescale_to_next_inplace(raw)
    if target is not None and same_scale(raw.scale, target, 1e-9):
        raw.scale = target
    return Ciphertext(raw, context_id, layout)


def plain_scale_for(ctx: CkksContext, a: Ciphertext, target: float | None = None) -> float:
    """The scale to encode a plaintext factor at so that ``a * pt`` rescales to ``target`` exactly
    (default: ``a``'s own scale)."""
    lvl = ctx.level(a)
    q = prime_at(ctx, lvl)
    return q if target is None else q * target / a.seal.scale


def mul_plain(
    ctx: CkksContext,
    a: Ciphertext,
    values: np.ndarray | float,
    layout: Layout | None = None,
    scale: float | None = None,
) -> Ciphertext:
    """a * values (slot vector or scalar), one level; the result has ``scale`` (default: a's)."""
    ctx.check(a)
    need_levels(ctx, a, 1)
    lvl = ctx.level(a)
    target = a.seal.scale if scale is None else scale
    if not np.any(values):  # SEAL refuses a product whose result is "transparent" (exactly zero)
        return encrypted_zero(ctx, lvl - 1, target, a.context_id, layout or a.layout)
    pt = ctx.encode(values, lvl, plain_scale_for(ctx, a, target))
    out = _new(ctx)
    ctx.evaluator.multiply_plain(a.seal, pt, out)
    return rescale(ctx, out, a.context_id, layout or a.layout, target)


def encrypted_zero(
    ctx: CkksContext, level: int, scale: float, context_id: bytes, layout: Layout
) -> Ciphertext:
    """A fresh public-key encryption of zero: what a product by an all-zero plaintext equals.

    SEAL throws on a result whose second polynomial is zero ("transparent": it would be readable
    without the key), so a product by zeros, e.g. a row mask that selects nothing in one ciphertext of
    a multi-ciphertext matrix, is replaced by an encryption of zero at the level and scale the product
    would have had."""
    out = _new(ctx)
    ctx.encrypt_zero(out, level, scale)
    return Ciphertext(out, context_id, layout)


def rerandomise(ctx: CkksContext, a: Ciphertext) -> Ciphertext:
    """``a`` plus a fresh public-key encryption of zero: the same message, plus fresh noise.

    Why: a ciphertext's second polynomial c1 is a deterministic function of the ciphertexts it was
    computed from and of the evaluator's plaintexts (weights). A key holder who made those input
    ciphertexts can redo a guessed computation and compare c1 exactly, so every ciphertext that goes
    back to the key holder (refresh requests, logits, an exported adapter) is re-randomised first:
    c1 + u*a + e1 is pseudorandom under RLWE whatever c1 was (ours; multiparty CKKS does the same
    before a collective decryption). It does not hide the *noise* in c0: a refresh's mask covers it,
    decrypted outputs keep it (docs/fhe.md, "Client-aided refresh")."""
    if a.seal.size() != 2:
        raise ProtocolError(f"re-randomise a relinearised ciphertext (2 polynomials), got {a.seal.size()}")
    zero = encrypted_zero(ctx, ctx.level(a), a.seal.scale, a.context_id, a.layout)
    out = _new(ctx)
    ctx.evaluator.add(a.seal, zero.seal, out)
    return Ciphertext(out, a.context_id, a.layout)


def multiply(ctx: CkksContext, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    """Elementwise a * b with relinearisation and rescale, one level."""
    a, b = align(ctx, a, b)
    need_levels(ctx, a, 1)
    out = _new(ctx)
    if a.seal is b.seal:
        ctx.evaluator.square(a.seal, out)
    else:
        ctx.evaluator.multiply(a.seal, b.seal, out)
    ctx.evaluator.relinearize_inplace(out, ctx.relin_keys)
    return rescale(ctx, out, a.context_id, a.layout)


def square(ctx: CkksContext, a: Ciphertext) -> Ciphertext:
    return multiply(ctx, a, a)


def rotate_raw(ctx: CkksContext, raw: sealapi.Ciphertext, step: int) -> sealapi.Ciphertext:
    """Rotate a SEAL ciphertext left by ``step`` into a new one: with the step's own Galois key, or (keys
    made with ``rotation_key_steps(..., "pow2")``) composed from its NAF digits' keys, one key switch
    per digit (what SEAL's ``rotate_vector`` does when one key object holds them all; ours, since each
    key is its own object). The one place every rotation goes through, so both key policies work
    everywhere."""
    if not ctx.can_rotate(step):
        raise LevelError(f"no Galois key for rotation step {step % ctx.slots}: generate keys with this step")
    signed = galois.signed_step(step, ctx.slots)
    terms = [signed] if step % ctx.slots in ctx.galois_keys else galois.naf_terms(signed)
    out = raw
    for term in terms:
        nxt = _new(ctx)
        ctx.evaluator.rotate_vector(out, term, ctx.galois_keys[term % ctx.slots], nxt)
        out = nxt
    return out if terms else clone_raw(ctx, raw)


def rotate(ctx: CkksContext, a: Ciphertext, step: int) -> Ciphertext:
    """Rotate the slots left by ``step``; needs the Galois key for that step or its NAF digits."""
    ctx.check(a)
    if step % ctx.slots == 0:
        return a
    return Ciphertext(rotate_raw(ctx, a.seal, step), a.context_id, a.layout)


def rotate_sum(ctx: CkksContext, a: Ciphertext, span: int, stride: int = 1) -> Ciphertext:
    """Add ``a`` to its rotations by stride, 2*stride, ... (log2(span) rotations): slot t then holds the
    sum of slots t, t+stride, ..., t+(span-1)*stride."""
    out = a
    step = stride
    while step < span * stride:
        out = add(ctx, out, rotate(ctx, out, step))
        step *= 2
    return out


def rotate_sum_steps(span: int, stride: int = 1) -> list[int]:
    steps, step = [], stride
    while step < span * stride:
        steps.append(step)
        step *= 2
    return steps
