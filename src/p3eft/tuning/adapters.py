"""LoRA adapters through ``peft``: attach, export (``save_pretrained``, safetensors), reload with checks.

Exported folders are plain PEFT adapters (``adapter_config.json`` + ``adapter_model.safetensors``)
that ``peft.PeftModel.from_pretrained(base_model, folder)`` loads without p3eft; we add a small
``p3eft_adapter.json`` describing the run (model name, dataset, whether the base weights were random).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from p3eft.errors import MissingResourceError, P3eftError
from p3eft.models.loading import LoadedModel
from p3eft.network import offline
from p3eft.tuning.config import TrainConfig

ADAPTER_META = "p3eft_adapter.json"


def lora_config(loaded: LoadedModel, config: TrainConfig) -> Any:
    """The ``peft.LoraConfig`` for a model family and a training config (via :class:`LoraSettings`)."""
    seq_cls = loaded.spec.family == "bert" or "ForSequenceClassification" in type(loaded.model).__name__
    return config.lora.peft_config(loaded.spec.family, seq_cls=seq_cls)


def attach_lora(loaded: LoadedModel, config: TrainConfig) -> Any:
    """Wrap the model with fresh LoRA adapters (seeded by ``config.seed``); only adapters are trainable."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return get_peft_model(loaded.model, lora_config(loaded, config))


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named parameters that require gradients, in module order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(peft_model: Any, folder: str | Path, meta: dict[str, Any]) -> Path:
    """``save_pretrained`` (safetensors) plus our run description."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return folder


def check_adapter_dir(folder: str | Path) -> dict[str, Any]:
    """Validate an adapter folder before handing it to peft; return its ``adapter_config.json``."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingResourceError(f"adapter folder {folder} does not exist")
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise P3eftError(f"{folder} is not a PEFT adapter: adapter_config.json is missing")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise P3eftError(f"corrupt adapter {folder}: adapter_config.json is not valid JSON ({err})") from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise P3eftError(f"corrupt adapter {folder}: adapter_config.json has no peft_type")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise P3eftError(f"corrupt adapter {folder}: adapter_model.safetensors is missing")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise P3eftError(
            f"corrupt adapter {folder}: adapter_model.safetensors is unreadable ({err})"
        ) from None
    if not keys:
        raise P3eftError(f"corrupt adapter {folder}: adapter_model.safetensors holds no tensors")
    return cfg


def load_adapter(loaded: LoadedModel, folder: str | Path) -> Any:
    """The base model with the adapter in ``folder`` applied (eval mode), after :func:`check_adapter_dir`."""
    from peft import PeftModel

    check_adapter_dir(folder)
    meta_file = Path(folder) / ADAPTER_META
    base = None
    if meta_file.is_file():
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            base = json.loads(meta_file.read_text()).get("model")
    if base and base != loaded.spec.name:
        raise P3eftError(f"adapter {folder} was trained on {base!r}, not {loaded.spec.name!r}")
    try:
        with offline():
            model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise P3eftError(f"adapter {folder} does not fit {loaded.spec.name}: {first[:300]}") from None
    model.eval()
    return model
