"""p3eft: privacy-preserving, parameter-efficient fine-tuning of proprietary foundation models.

Two schemes share one framework:

* :mod:`p3eft.privtuner` -- PrivTuner: CKKS homomorphic encryption + LoRA (engine in :mod:`p3eft.fhe`,
  wireless resource optimiser in :mod:`p3eft.wireless`).
* :mod:`p3eft.obfuscatune` -- ObfuscaTune: obfuscated weights on an untrusted accelerator, the rest
  in a trusted execution environment.

Shared building blocks: :mod:`p3eft.models`, :mod:`p3eft.data`, :mod:`p3eft.tuning` (the plaintext
LoRA reference both schemes are judged against) and :mod:`p3eft.runtime` (parties as processes).
"""

__version__ = "0.1.0"
