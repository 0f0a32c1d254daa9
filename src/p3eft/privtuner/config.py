"""PrivTuner configuration: model, sequence length, LoRA, learning rate, CKKS chain and refresh (ours).

Why our own chains: the engine's named sets (``N8192`` ... ``N32768``) have 2 to 8 levels, chosen for
the wireless cost sweep. An encoder layer under encryption needs tens of levels between the
client-aided refreshes, so PrivTuner builds deeper chains with :class:`~p3eft.fhe.params.ParamSet`
directly. Every chain is checked >= 128-bit by the engine's HomomorphicEncryption.org table when the
config is built, so no code path can run on a weaker set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from p3eft.errors import P3eftError, UnknownNameError
from p3eft.fhe.galois import ROTATION_KEY_MODES
from p3eft.fhe.params import ParamSet

# Chains (ours): 40-bit scale primes, as many as the 128-bit HomomorphicEncryption.org limit allows
# (N=16384: 438 bits -> 8 levels; N=32768: 881 bits -> 19), and a 60-bit special prime. Why 60: SEAL's
# key switching adds noise in proportion to the largest prime over the special one. With the 50-bit
# special prime PT16384 had until 2026-12-01 (equal to its q0), one rotation added an error of about
# 1e-6 to a slot (a fresh encryption: 2e-8), and the encrypted encoder's output was ~3e-6 off the
# twin's on the tiny test model; with 60 bits a rotation adds ~2e-8 and that output is ~3e-8 off
# (tests/privtuner/test_core_encrypted.py). 430 bits: still within the 438.
PRIVTUNER_PARAM_SETS: dict[str, ParamSet] = {
    "PT16384": ParamSet("PT16384", 16384, (50, *([40] * 8), 60)),
    "PT32768": ParamSet("PT32768", 32768, (60, *([40] * 19), 60)),
    # The shallowest N=32768 chain PrivTuner runs (softmax's exp needs 4 levels above the refresh floor at
    # level 1): 320 bits, 256-bit. Measured for the wireless optimiser because the in-process bench of
    # PT32768 (and of a depth-8 chain) was killed by the OOM killer on a 23 GB machine: its key-switching
    # keys grow with (primes - 1) x primes, and this chain's are ~1/10 of PT32768's.
    "PT32768-d5": ParamSet("PT32768-d5", 32768, (60, *([40] * 5), 60)),
}

MIN_REFRESH_LAMBDA = 30


def get_privtuner_param_set(name: str) -> ParamSet:
    """A PrivTuner chain by name, checked >= 128-bit (raises otherwise)."""
    try:
        ps = PRIVTUNER_PARAM_SETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown PrivTuner parameter set {name!r}; known: {', '.join(PRIVTUNER_PARAM_SETS)}"
        ) from None
    ps.check_secure()
    return ps


@dataclass
class PrivTunerConfig:
    """Everything both parties must agree on before a session (all public).

    ``layers`` cuts the encoder to its first k layers. ``adapt_from`` is the lowest adapted layer: LoRA
    sits on query and value of layers ``adapt_from .. layers-1`` (peft's default BERT targets), the
    encrypted backward runs down to it, and the layers below it are frozen (their output ciphertexts are
    cached per example, ours). ``refresh_bound`` bounds |value| of every refreshed ciphertext: the mask
    is 2^lambda times wider, and calibration checks the bound on training data.
    """

    model: str = "tiny"
    layers: int = 2
    max_len: int = 64
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lr: float = 1e-2
    param_set: str = "PT16384"
    refresh_lambda: int = 30
    refresh_bound: float = 64.0
    adapt_from: int = 0
    num_labels: int = 2
    seed: int = 0
    margin: float = 0.25  # calibrated ranges are widened by this fraction of their width on each side
    # the classifier's input standardized by calibrated public constants (p3eft.privtuner.standardize)
    head_standardize: bool = True
    # which Galois keys the data owner makes (p3eft.fhe.galois): "exact" (one per rotation step) or
    # "pow2" (signed powers of two; SEAL composes the other steps: fewer keys, slower rotations)
    rotation_keys: str = "exact"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise P3eftError("layers must be at least 1")
        if not 0 <= self.adapt_from < self.layers:
            raise P3eftError(f"adapt_from must lie in 0..{self.layers - 1}")
        if self.max_len < 2:
            raise P3eftError("max_len must be at least 2")
        if self.lora_rank < 1:
            raise P3eftError("lora_rank must be at least 1")
        if self.refresh_lambda < MIN_REFRESH_LAMBDA:
            raise P3eftError(f"refresh lambda must be >= {MIN_REFRESH_LAMBDA} bits")
        if self.rotation_keys not in ROTATION_KEY_MODES:
            raise P3eftError(
                f"rotation_keys must be one of {', '.join(ROTATION_KEY_MODES)}, not {self.rotation_keys!r}"
            )
        get_privtuner_param_set(self.param_set)

    @property
    def params(self) -> ParamSet:
        return get_privtuner_param_set(self.param_set)

    @property
    def lora_scaling(self) -> float:
        """peft's LoRA scaling alpha / r."""
        return self.lora_alpha / self.lora_rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
