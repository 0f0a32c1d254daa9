"""Why a candidate's ring dimension has no PrivTuner step cost: can PrivTuner run at that N at all?

A PrivTuner step-cost file measures some ring dimensions; :mod:`p3eft.wireless.costs` never derives a
cost across N, so candidates at an unmeasured N are left out of a default candidate set. This module
says why, in one line, so that the outputs carry the reason and not only the gap.

The check (ours): PrivTuner refreshes between the *phases* of a function, never inside one, so its
deepest single phase must fit between a fresh ciphertext and the refresh floor. Softmax's exp is a
degree-6 polynomial evaluated in one phase (:func:`p3eft.privtuner.approx.build`), which every BERT
layer runs; the levels it needs are read from PrivTuner's own code, not restated here. A ring
dimension is *unable* to run PrivTuner if no 128-bit chain at that N with the measured chains' scale
primes leaves that many usable levels (:attr:`~p3eft.wireless.candidates.Candidate.usable_levels`,
whose refresh floor is more lenient than the mask bound PrivTuner configures, so "unable" is a safe
verdict). We search every chain ``[q0, scale x k, special]`` with 20 <= q0 <= 60 and
scale <= special <= 60 (SEAL's key switching wants the special prime at least as large as the
primes it switches over).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from p3eft.fhe.params import HE_STANDARD_MAX_LOGQ
from p3eft.wireless.candidates import Candidate
from p3eft.wireless.errors import ScenarioError

#: The site whose phase is PrivTuner's deepest in every BERT layer (softmax's exp).
_EXP_SITE = "L0.exp"


@functools.lru_cache(maxsize=1)
def privtuner_phase_levels() -> int:
    """Levels above the refresh floor that PrivTuner's softmax exp needs in one phase (from its code)."""
    from p3eft.privtuner.approx import build

    return build(_EXP_SITE, -8.0, 0.0).first_phase_depth


def max_usable_levels(n: int, scale_bits: int) -> tuple[int, Candidate | None]:
    """The most usable levels of any 128-bit chain at N with ``scale_bits`` scale primes, and one such
    chain (``None`` if no chain of that form is 128-bit at N)."""
    limit = HE_STANDARD_MAX_LOGQ[n][128]
    best: tuple[int, Candidate | None] = (0, None)
    for q0 in range(20, 61):
        for special in range(scale_bits, 61):
            k = (limit - q0 - special) // scale_bits
            if k < 1:
                continue
            try:
                c = Candidate(n, (q0, *([scale_bits] * k), special))
            except ScenarioError:  # no usable level, or (never here) above the 128-bit limit
                continue
            if c.usable_levels > best[0]:
                best = (c.usable_levels, c)
    return best


@dataclass(frozen=True)
class Unavailable:
    """A ring dimension with no PrivTuner step cost, and why (one line for the outputs)."""

    n: int
    runnable: bool  # False: PrivTuner cannot run at this N at 128 bits (not just unmeasured)
    reason: str


def unmeasured_n(n: int, scale_bits: int, measured: list[int]) -> Unavailable:
    """Why candidates at N (absent from the PrivTuner cost file(s), which measured ``measured``) are out."""
    need = privtuner_phase_levels()
    got, chain = max_usable_levels(n, scale_bits)
    limit = HE_STANDARD_MAX_LOGQ[n][128]
    if got < need:
        best = f" (at most {got}, e.g. {chain.label})" if chain is not None else ""
        return Unavailable(
            n,
            False,
            f"PrivTuner cannot run at N={n}: softmax's exp needs {need} levels above the refresh floor "
            f"in one phase, and no 128-bit chain (log Q <= {limit}) with {scale_bits}-bit scale primes "
            f"has them{best}",
        )
    return Unavailable(
        n,
        True,
        f"no PrivTuner measurement at N={n} (measured: N in {measured}); step costs are not derived across N",
    )


def chain_too_shallow(c: Candidate) -> str:
    """Why PrivTuner cannot run on chain ``c`` ('' if its usable levels hold the deepest phase)."""
    need = privtuner_phase_levels()
    if c.usable_levels >= need:
        return ""
    return (
        f"PrivTuner cannot run on {c.label}: softmax's exp needs {need} levels above the refresh floor in "
        f"one phase, the chain has {c.usable_levels}"
    )
