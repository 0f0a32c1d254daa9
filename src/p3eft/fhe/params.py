"""CKKS parameter sets and their security labels.

A parameter set is a ring dimension N and a modulus chain. Its security depends only on N and the
total number of modulus bits (including SEAL's special key-switching prime), and the
HomomorphicEncryption.org standard (Albrecht et al., "Homomorphic Encryption Standard", 2018,
Table for uniform ternary secrets, classical attacks) gives the largest total for each level. We label
a set with the highest level its total satisfies and refuse anything below 128 bits, so no code path
can run on a weak set by accident.

The named sets and the chain layout are ours: the first prime is 60 bits so that the
level above it keeps the headroom the client-aided refresh needs, the middle primes are the scale (40
bits), and the last is the 60-bit special prime. Depth per N was chosen so the three named sets cover
128, 192 and 256 bits, which gives the wireless optimiser a privacy term that grows with N.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from p3eft.errors import SecurityError, UnknownNameError

# HomomorphicEncryption.org standard, ternary secret, classical: N -> {security bits: max log2 Q}.
HE_STANDARD_MAX_LOGQ: dict[int, dict[int, int]] = {
    1024: {128: 27, 192: 19, 256: 14},
    2048: {128: 54, 192: 37, 256: 29},
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}

SUPPORTED_N = (8192, 16384, 32768)
MAX_PRIME_BITS = 60  # SEAL's limit for one prime of the chain


class InsecureParametersError(SecurityError):
    """A parameter set that the HomomorphicEncryption.org table puts below 128-bit security."""


def security_level(poly_modulus_degree: int, total_modulus_bits: int) -> int:
    """The highest standard level (128/192/256) that ``total_modulus_bits`` satisfies at this N, or 0."""
    table = HE_STANDARD_MAX_LOGQ.get(poly_modulus_degree)
    if table is None:
        raise UnknownNameError(
            f"no security table entry for N={poly_modulus_degree}; known: {sorted(HE_STANDARD_MAX_LOGQ)}"
        )
    best = 0
    for bits, max_logq in sorted(table.items()):
        if total_modulus_bits <= max_logq:
            best = bits
    return best


@dataclass(frozen=True)
class ParamSet:
    """A CKKS parameter set: ring dimension, modulus chain (bit sizes) and encoding scale.

    ``coeff_mod_bit_sizes`` lists the primes from the bottom of the chain (q0, the decryption level)
    to the special key-switching prime last, as SEAL expects. ``depth`` is the number of rescales from
    a fresh ciphertext down to level 0.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int = 40

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in HE_STANDARD_MAX_LOGQ:
            raise UnknownNameError(f"unsupported ring dimension N={self.poly_modulus_degree}")
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError("a CKKS chain needs at least q0, one scale prime and the special prime")
        if any(b > MAX_PRIME_BITS or b < 20 for b in self.coeff_mod_bit_sizes):
            raise ValueError(f"prime sizes must lie in [20, {MAX_PRIME_BITS}] bits")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def top_level(self) -> int:
        """Level index of a fresh ciphertext (level 0 holds only q0)."""
        return self.depth

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def security_bits(self) -> int:
        return security_level(self.poly_modulus_degree, self.total_bits)

    def level_bits(self, level: int) -> int:
        """log2 of the ciphertext modulus at ``level`` (sum of the data primes q0..q_level)."""
        return sum(self.coeff_mod_bit_sizes[: level + 1])

    def check_secure(self) -> int:
        """Return the security label; raise :class:`InsecureParametersError` below 128 bits."""
        bits = self.security_bits
        if bits < 128:
            limit = HE_STANDARD_MAX_LOGQ[self.poly_modulus_degree][128]
            raise InsecureParametersError(
                f"parameter set {self.name!r} (N={self.poly_modulus_degree}, {self.total_bits} modulus bits) "
                f"is below 128-bit security: the HomomorphicEncryption.org limit at this N is {limit} bits"
            )
        return bits

    @classmethod
    def for_depth(
        cls,
        poly_modulus_degree: int,
        depth: int,
        scale_bits: int = 40,
        base_bits: int = 60,
        special_bits: int = 60,
        name: str | None = None,
    ) -> ParamSet:
        """A chain [base, scale x depth, special] for ``depth`` rescales; refused if below 128 bits."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        sizes = (base_bits, *([scale_bits] * depth), special_bits)
        ps = cls(name or f"N{poly_modulus_degree}-d{depth}", poly_modulus_degree, sizes, scale_bits)
        ps.check_secure()
        return ps

    def to_json(self) -> str:
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ParamSet:
        try:
            d = json.loads(text)
            ps = cls(
                str(d["name"]),
                int(d["poly_modulus_degree"]),
                tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
                int(d["scale_bits"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise SecurityError(f"malformed parameter-set description: {err}") from err
        ps.check_secure()
        return ps


# Named sets (ours): depth 2 / 4 / 8 at 40-bit scale; labelled 128 / 192 / 256 bits.
NAMED_SETS: dict[str, ParamSet] = {
    "N8192": ParamSet("N8192", 8192, (60, 40, 40, 60)),
    "N16384": ParamSet("N16384", 16384, (60, 40, 40, 40, 40, 60)),
    "N32768": ParamSet("N32768", 32768, (60, *([40] * 8), 60)),
}


def get_param_set(name: str) -> ParamSet:
    """Look up a named set and check its security (refuses < 128 bits)."""
    try:
        ps = NAMED_SETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown FHE parameter set {name!r}; known: {', '.join(NAMED_SETS)}"
        ) from None
    ps.check_secure()
    return ps
