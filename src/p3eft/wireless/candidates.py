"""The FHE choice of each user: a ring dimension N together with a modulus chain (a "candidate").

The privacy of a candidate is the security level that the HomomorphicEncryption.org standard table
gives its real total modulus size log Q at its N (``p3eft.fhe.params.security_level``), so the label
is a fact of the chain and not assigned by construction. At one N a deeper chain (more primes) means
fewer client-aided refresh round trips per training step but a larger log Q and so, possibly, a lower
label; that is the protocol's real privacy/energy trade-off.

Refresh headroom (ours, from the protocol in docs/wireless.md): the data owner can only refresh a
ciphertext whose modulus leaves room for the statistical mask, q_l > 2^(lambda + 1) x scale x bound.
The lowest level that satisfies it is the *refresh level*; a fresh ciphertext can be rescaled
``depth - refresh_level`` times before it has to go back to the data owner (its *usable levels*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from p3eft.fhe.params import HE_STANDARD_MAX_LOGQ, security_level
from p3eft.wireless.errors import ScenarioError

#: Statistical hiding parameter of the refresh mask and the message bound it must cover (ours, the
#: protocol's defaults: lambda = 30, |m| <= 4).
REFRESH_LAMBDA = 30
REFRESH_MESSAGE_BOUND = 4.0


@dataclass(frozen=True)
class Candidate:
    """One FHE choice: N and the chain's prime sizes (q0 first, the special key-switching prime last)."""

    n: int
    coeff_modulus_bits: tuple[int, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if self.n not in HE_STANDARD_MAX_LOGQ:
            raise ScenarioError(
                f"candidate N={self.n} is not in the HE-standard table (known: {sorted(HE_STANDARD_MAX_LOGQ)})"
            )
        bits = self.coeff_modulus_bits
        if len(bits) < 3 or any(not isinstance(b, int) or not 20 <= b <= 60 for b in bits):
            raise ScenarioError(
                f"candidate N={self.n}: the chain needs >= 3 primes of 20..60 bits, got {list(bits)}"
            )
        if self.security_bits < 128:
            limit = HE_STANDARD_MAX_LOGQ[self.n][128]
            raise ScenarioError(
                f"candidate {self.label}: log Q = {self.log_q} is above the 128-bit limit {limit} at this N"
            )
        if self.usable_levels < 1:
            raise ScenarioError(
                f"candidate {self.label}: no level is left between a fresh ciphertext and the refresh level"
            )
        if not self.name:
            object.__setattr__(self, "name", self.label)

    @property
    def label(self) -> str:
        """``N16384-d4`` for the project's chain layout, else ``N16384-[60,40,...]``."""
        b = self.coeff_modulus_bits
        if b[0] == 60 and b[-1] == 60 and len(set(b[1:-1])) == 1 and b[1] == 40:
            return f"N{self.n}-d{self.depth}"
        return f"N{self.n}-[{','.join(map(str, b))}]"

    @property
    def log_q(self) -> int:
        """Total modulus bits, special prime included (what the HE-standard table bounds)."""
        return sum(self.coeff_modulus_bits)

    @property
    def security_bits(self) -> int:
        return security_level(self.n, self.log_q)

    @property
    def depth(self) -> int:
        """Rescales from a fresh ciphertext to level 0."""
        return len(self.coeff_modulus_bits) - 2

    @property
    def data_primes(self) -> int:
        return len(self.coeff_modulus_bits) - 1

    @property
    def slots(self) -> int:
        return self.n // 2

    @property
    def scale_bits(self) -> int:
        return self.coeff_modulus_bits[1]

    @property
    def refresh_level(self) -> int:
        """Lowest level whose modulus holds the refresh mask (ours): q_l > 2^(lambda+1) scale bound."""
        need = REFRESH_LAMBDA + 1 + self.scale_bits + math.log2(REFRESH_MESSAGE_BOUND)
        total = 0
        for level, b in enumerate(self.coeff_modulus_bits[:-1]):
            total += b
            if total > need:
                return level
        return self.depth + 1  # never: no usable level

    @property
    def usable_levels(self) -> int:
        """Rescales between a fresh (or freshly refreshed) ciphertext and the refresh level."""
        return self.depth - self.refresh_level

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "poly_modulus_degree": self.n,
            "coeff_modulus_bits": list(self.coeff_modulus_bits),
        }

    def describe(self) -> dict[str, Any]:
        """Everything a result needs to say what was chosen and why it is labelled so."""
        return {
            **self.to_dict(),
            "log_q": self.log_q,
            "security_bits": self.security_bits,
            "depth": self.depth,
            "refresh_level": self.refresh_level,
            "usable_levels": self.usable_levels,
        }

    @classmethod
    def from_spec(cls, spec: Any) -> Candidate:
        """From a scenario entry: ``{"poly_modulus_degree": N, "coeff_modulus_bits": [...], "name"?}``
        or the short form ``"N16384-d4"`` (the project's [60, 40 x d, 60] layout)."""
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, str):
            head, _, d = spec.partition("-d")
            if not head.startswith("N") or not d.isdigit() or not head[1:].isdigit():
                raise ScenarioError(f"candidate {spec!r}: write 'N<ring dim>-d<depth>' or a mapping")
            return chain(int(head[1:]), int(d))
        if not isinstance(spec, dict):
            raise ScenarioError(f"candidate {spec!r} must be a mapping or 'N<ring dim>-d<depth>'")
        unknown = set(spec) - {"name", "poly_modulus_degree", "coeff_modulus_bits"}
        if unknown:
            raise ScenarioError(f"candidate has unknown field(s) {sorted(unknown)}")
        try:
            return cls(
                n=int(spec["poly_modulus_degree"]),
                coeff_modulus_bits=tuple(int(b) for b in spec["coeff_modulus_bits"]),
                name=str(spec.get("name") or ""),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ScenarioError(
                f"candidate {spec!r} needs poly_modulus_degree and coeff_modulus_bits"
            ) from err


def chain(n: int, depth: int) -> Candidate:
    """The project's chain layout: a 60-bit q0, ``depth`` 40-bit scale primes, a 60-bit special prime."""
    return Candidate(n, (60, *([40] * depth), 60))


#: Default candidate set (ours): two chains at each N. At N = 8192 the HE-standard 128-bit limit
#: (218 bits) leaves room for one 40-bit-scale chain in the project's layout (d = 2); the second one
#: keeps the 40-bit scale with a 45-bit q0 and special prime, which buys one more usable level.
DEFAULT_CANDIDATE_SPECS: tuple[Any, ...] = (
    "N8192-d2",
    {"poly_modulus_degree": 8192, "coeff_modulus_bits": [45, 40, 40, 40, 45]},
    "N16384-d4",
    "N16384-d7",
    "N32768-d8",
    "N32768-d12",
)


def default_candidates() -> list[Candidate]:
    return [Candidate.from_spec(s) for s in DEFAULT_CANDIDATE_SPECS]
