"""Model registry and loading: packages with real weights, local folders, the hub (opt-in), random-from-config.

Public API: :class:`ModelSpec`, :func:`list_models`, :func:`get_spec`, :class:`LoadedModel`,
:func:`load_causal_lm`, :func:`load_sequence_classifier`, :func:`count_parameters`,
:func:`parameter_count_from_config`, :func:`real_weights_location`.
"""

from p3eft.models.loading import (
    LoadedModel,
    count_parameters,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    parameter_count_from_config,
    resolve_spec,
)
from p3eft.models.registry import ModelSpec, get_spec, list_models
from p3eft.models.sources import cache_dir, hub_allowed, real_weights_location

# Importing p3eft.models changes no process setting: each load goes offline for its own duration
# (p3eft.network.offline) unless the user set P3EFT_ALLOW_HUB=1.

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "cache_dir",
    "count_parameters",
    "get_spec",
    "hub_allowed",
    "list_models",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "parameter_count_from_config",
    "real_weights_location",
    "resolve_spec",
]
