"""p3eft: privacy-preserving, parameter-efficient fine-tuning of proprietary foundation models.

Two schemes share one framework:

* :mod:`p3eft.privtuner` -- PrivTuner: CKKS homomorphic encryption + LoRA, the encrypted fine-tuning
  and inference protocol (``p3eft privtuner finetune | evaluate | verify | bench``); its CKKS engine
  is :mod:`p3eft.fhe`, its wireless resource optimiser :mod:`p3eft.wireless`.
* :mod:`p3eft.obfuscatune` -- ObfuscaTune: obfuscated weights on an untrusted accelerator, the rest
  in a trusted execution environment.

Shared building blocks: :mod:`p3eft.models`, :mod:`p3eft.data`, :mod:`p3eft.tuning` (the plaintext
LoRA reference both schemes are judged against, its one LoRA config and its checkpoints),
:mod:`p3eft.channel` (how parties talk), :mod:`p3eft.network` (the one hub switch) and
:mod:`p3eft.runtime` (parties as processes).
"""

__version__ = "0.1.0"
