"""The plaintext LoRA reference, reused by both schemes: scoring, training data, loop, checkpoints, PEFT export.

Public API: :func:`score_multiple_choice`, :func:`choice_logliks`, :func:`classification_accuracy`,
:func:`build_lm_training_examples`, :func:`collate_lm`, :class:`StepBatches`, :class:`TrainConfig`,
:func:`train_loop`, :class:`Checkpointer`, :class:`LoraSettings`, :func:`attach_lora`, :func:`save_adapter`,
:func:`load_adapter`, :func:`finetune_plain`, :func:`evaluate`.
"""

from p3eft.tuning.adapters import (
    attach_lora,
    check_adapter_dir,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from p3eft.tuning.checkpoint import Checkpointer
from p3eft.tuning.config import TrainConfig, default_target_modules
from p3eft.tuning.lm_data import (
    IGNORE_INDEX,
    StepBatches,
    build_classification_examples,
    build_lm_training_examples,
    collate_classification,
    collate_lm,
)
from p3eft.tuning.loop import TrainResult, train_loop
from p3eft.tuning.lora import LoraSettings
from p3eft.tuning.plain import evaluate, finetune_plain
from p3eft.tuning.scoring import choice_logliks, classification_accuracy, encode_pair, score_multiple_choice

__all__ = [
    "IGNORE_INDEX",
    "Checkpointer",
    "LoraSettings",
    "StepBatches",
    "TrainConfig",
    "TrainResult",
    "attach_lora",
    "build_classification_examples",
    "build_lm_training_examples",
    "check_adapter_dir",
    "choice_logliks",
    "classification_accuracy",
    "collate_classification",
    "collate_lm",
    "default_target_modules",
    "encode_pair",
    "evaluate",
    "finetune_plain",
    "load_adapter",
    "save_adapter",
    "score_multiple_choice",
    "train_loop",
    "trainable_parameters",
]
