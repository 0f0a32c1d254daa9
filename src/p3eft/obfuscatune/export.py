"""Write an enclave's exported adapter (plain coordinates) as a standard PEFT adapter folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p3eft.tuning.adapters import ADAPTER_META


def save_exported_adapter(
    export: dict[str, Any], folder: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (+ our run description): what
    ``peft.PeftModel.from_pretrained(base, folder)`` loads, with no p3eft needed."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    LoraConfig(**export["config"]).save_pretrained(str(folder))
    tensors = {k: v.detach().contiguous() for k, v in export["tensors"].items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / ADAPTER_META).write_text(json.dumps({"scheme": "obfuscatune", **(meta or {})}, indent=2))
    return folder
