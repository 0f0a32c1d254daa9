"""Which rotation (Galois) keys a data owner generates, and which rotations they allow.

Why this module: a key-switching key for one rotation step holds (primes - 1) x primes polynomials, so
at N = 32768 with 21 primes each key is ~220 MB, and a model that rotates by ~80 distinct steps needs
~17 GB of keys on the evaluator (more than our 23 GB development machine holds next to the work). Two
policies (the choice between them is ours; the composition is SEAL's):

- ``exact``: one key per step the model uses. Each rotation is one key switch.
- ``pow2``: keys only for the signed powers of two that the steps' non-adjacent forms (NAF) use. SEAL's
  ``rotate_vector`` composes a step it has no key for from those powers, one key switch per nonzero
  NAF digit (at most ceil(log2(slots)/2) + 1, about a third of the bits on average). Fewer, cheaper to
  send and to hold keys; more time and key-switching noise per rotation.

Steps are kept as SEAL's rotation amounts modulo the slot count (``0 < step < slots``). A rotation is
handed to SEAL as the signed representative in (-slots/2, slots/2] (the same rotation), so that the NAF
SEAL composes it from is the one :func:`can_rotate` checks.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

ROTATION_KEY_MODES = ("exact", "pow2")


def signed_step(step: int, slots: int) -> int:
    """The rotation ``step`` (mod ``slots``) as the representative in (-slots/2, slots/2]."""
    s = int(step) % slots
    return s - slots if s > slots // 2 else s


def naf_terms(value: int) -> list[int]:
    """The non-adjacent form of ``value``: signed powers of two, no two adjacent, summing to it (least
    significant first; the decomposition SEAL's ``rotate_vector`` applies to a step without a key)."""
    sign = -1 if value < 0 else 1
    v, bit, out = abs(int(value)), 1, []
    while v:
        digit = 2 - (v & 3) if v & 1 else 0  # +1 when v = 1 (mod 4), -1 when v = 3 (mod 4)
        if digit:
            out.append(sign * digit * bit)
        v = (v - digit) >> 1
        bit <<= 1
    return out


def rotation_key_steps(steps: Iterable[int], slots: int, mode: str = "exact") -> list[int]:
    """The steps to generate Galois keys for so that every rotation in ``steps`` is possible, sorted,
    each in 1..slots-1."""
    if mode not in ROTATION_KEY_MODES:
        raise ValueError(f"rotation key mode must be one of {', '.join(ROTATION_KEY_MODES)}, not {mode!r}")
    wanted = {int(s) % slots for s in steps} - {0}
    if mode == "exact":
        return sorted(wanted)
    keys = {t % slots for s in wanted for t in naf_terms(signed_step(s, slots))}
    return sorted(keys - {0})


def can_rotate(step: int, key_steps: Collection[int], slots: int) -> bool:
    """Whether a rotation by ``step`` is possible with keys for ``key_steps``: by its own key, or composed
    from the keys of its NAF digits (what SEAL does when the step's own key is missing)."""
    s = int(step) % slots
    if s == 0 or s in key_steps:
        return True
    return all(t % slots in key_steps for t in naf_terms(signed_step(s, slots)))


__all__ = ["ROTATION_KEY_MODES", "can_rotate", "naf_terms", "rotation_key_steps", "signed_step"]
