"""End-of-training policy: the data owner decrypts the adapter into a standard PEFT folder, or it stays
encrypted and inference stays two-party (ours).

Export writes what ``peft.PeftModel.from_pretrained(base, folder)`` loads without p3eft: a LoRA
adapter on query and value (peft's default BERT targets) and the classifier head as a saved module,
built *through peft itself* (``get_peft_model`` + ``save_pretrained``), so the folder's names and config
are peft's own. Only the data owner can run it: the tensors come from its decryption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3eft.errors import P3eftError, ProtocolError
from p3eft.tuning.adapters import ADAPTER_META, check_adapter_dir

LORA_TARGETS = ("query", "value")
HEAD_MODULES = ("classifier",)


def _canonical(name: str) -> str:
    """A peft parameter name reduced to the model's own: drop wrapper prefixes and adapter names."""
    for prefix in ("base_model.model.", "bert.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".default.", ".").replace(".modules_to_save.", ".")


def peft_model_with(base: torch.nn.Module, adapter: dict[str, np.ndarray], rank: int, alpha: float) -> Any:
    """``base`` wrapped by peft (LoRA on query/value, classifier saved) holding the given tensors.

    ``adapter`` uses the model's own names (``encoder.layer.0.attention.self.query.lora_A.weight``,
    ``classifier.weight``...); every trainable peft parameter must be given, and nothing else.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type=TaskType.SEQ_CLS,
        modules_to_save=list(HEAD_MODULES),
    )
    model = get_peft_model(base, cfg)
    trainable = {_canonical(n): p for n, p in model.named_parameters() if p.requires_grad}
    wanted = {_canonical(k): v for k, v in adapter.items()}
    missing = sorted(set(trainable) - set(wanted))
    extra = sorted(set(wanted) - set(trainable))
    if missing or extra:
        raise ProtocolError(
            f"decrypted adapter does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, param in trainable.items():
            value = torch.as_tensor(np.asarray(wanted[name]), dtype=param.dtype)
            if value.shape != param.shape:
                raise ProtocolError(
                    f"{name}: decrypted shape {tuple(value.shape)}, model has {tuple(param.shape)}"
                )
            param.copy_(value)
    return model.eval()


def export_adapter(
    base: torch.nn.Module,
    adapter: dict[str, np.ndarray],
    folder: str | Path,
    rank: int,
    alpha: float,
    meta: dict[str, Any],
) -> Path:
    """Write the decrypted adapter as a PEFT folder (safetensors) plus our run description."""
    model = peft_model_with(base, adapter, rank, alpha)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / ADAPTER_META).write_text(json.dumps({"scheme": "privtuner", **meta}, indent=2))
    return folder


def load_exported(base: torch.nn.Module, folder: str | Path) -> Any:
    """Reload an exported adapter with plain peft (what a user without p3eft would do)."""
    from peft import PeftModel

    check_adapter_dir(folder)
    try:
        return PeftModel.from_pretrained(base, str(folder), is_trainable=False).eval()
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise P3eftError(
            f"adapter {folder} does not fit this model: {str(err).splitlines()[0][:300]}"
        ) from None


def exported_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_META
    if not path.is_file():
        raise P3eftError(f"{folder} has no {ADAPTER_META}: not a PrivTuner export")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise P3eftError(f"{path} is not JSON: {err}") from None
    if meta.get("scheme") != "privtuner":
        raise P3eftError(f"{folder} is not a PrivTuner export")
    return meta


def exported_arrays(folder: str | Path) -> dict[str, np.ndarray]:
    """An exported adapter's tensors as float64 arrays under the model's own parameter names (what
    ``params_from_export`` takes): to run the twin, or to encrypt the adapter again, on exactly the
    parameters the folder holds. The folder's safetensors hold float32 (peft's save)."""
    from safetensors.numpy import load_file

    check_adapter_dir(folder)  # refuses a folder without a readable adapter_model.safetensors
    path = Path(folder) / "adapter_model.safetensors"
    return {_canonical(k): v.astype(np.float64) for k, v in load_file(str(path)).items()}
