"""Load registry models (or a local model folder) as a causal LM or a sequence classifier.

Order of sources for a registry name: ``$P3EFT_MODELS/<name>`` > an installed asset package >
the hub (only with ``P3EFT_ALLOW_HUB=1``) > the architecture built from its config with seeded random
weights (only if ``allow_random``), flagged ``weights_random=True`` so every output can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p3eft.errors import MissingResourceError, P3eftError
from p3eft.models import sources
from p3eft.models.registry import ModelSpec, get_spec
from p3eft.network import offline

RANDOM_INIT_SEED = 0  # ours: fixed so two processes that build the same random model get the same weights


@dataclass
class LoadedModel:
    """A model ready to use plus the facts every output must carry about it."""

    model: torch.nn.Module
    tokenizer: Any
    spec: ModelSpec
    weights_random: bool
    source: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for result files."""
        return {
            "model": self.spec.name,
            "family": self.spec.family,
            "weights_random": self.weights_random,
            "source": self.source,
            "parameters": count_parameters(self.model),
        }


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (optionally only trainable) parameters; tied weights are counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


_FAMILY_OF_MODEL_TYPE = {"gpt2": "gpt2", "llama": "llama", "bert": "bert"}


def spec_for_directory(path: Path) -> ModelSpec:
    """A spec synthesised from a user's transformers folder (its ``config.json`` names the family)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MissingResourceError(f"{path} is not a model folder: it has no config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    except (json.JSONDecodeError, OSError) as err:
        raise P3eftError(f"{cfg_file} is not valid JSON: {err}") from None
    family = _FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise P3eftError(f"{path}: model_type {model_type!r} is not supported (gpt2, llama or bert)")

    def build() -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path)

    return ModelSpec(
        name=path.name,
        family=family,  # type: ignore[arg-type]
        task="sequence-classification" if family == "bert" else "causal-lm",
        hf_config=build,
        description=f"local folder {path}",
        local_path=str(path),
    )


def resolve_spec(name_or_path: str | Path) -> ModelSpec:
    """Registry name, or an existing local folder."""
    path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or path.is_dir() or "/" in str(name_or_path):
        if path.is_dir():
            return spec_for_directory(path)
        raise MissingResourceError(f"model folder {path} does not exist")
    return get_spec(str(name_or_path))


def parameter_count_from_config(spec: ModelSpec) -> int:
    """Parameters of the spec's default architecture, built on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = spec.hf_config()
    with torch.device("meta"):
        if spec.family == "bert":
            from transformers import BertModel

            model = BertModel(cfg)
        elif spec.task == "sequence-classification":
            model = AutoModelForSequenceClassification.from_config(cfg)
        else:
            model = AutoModelForCausalLM.from_config(cfg)
    return count_parameters(model)


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


def _load_tokenizer(spec: ModelSpec, weights_dir: Path | str | None) -> Any:
    with offline():
        return _fix_tokenizer(_find_tokenizer(spec, weights_dir))


def _find_tokenizer(spec: ModelSpec, weights_dir: Path | str | None) -> Any:
    from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast

    if isinstance(weights_dir, Path) and not any((weights_dir / f).is_file() for f in _TOKENIZER_FILES):
        # transformers 5 builds an *empty* tokenizer from a folder without tokenizer files (every text
        # becomes zero tokens), so such a folder falls back to the family's shipped tokenizer.
        weights_dir = None
    if weights_dir is not None:
        try:
            tok = AutoTokenizer.from_pretrained(weights_dir)
        except (OSError, ValueError):
            tok = None
        if tok is not None:
            return tok
    if spec.family == "gpt2":
        return GPT2TokenizerFast.from_pretrained(sources.gpt2_tokenizer_dir())
    if spec.family == "bert":
        return BertTokenizerFast.from_pretrained(sources.bert_uncased_vocab_dir())
    raise MissingResourceError(f"no tokenizer found for {spec.name} in {weights_dir}")


def load_tokenizer(name_or_path: str | Path) -> Any:
    """Only the tokenizer of a registry model or local folder (with a pad token), without loading weights.

    For ``smollm2-135m`` the first call still converts the GGUF once (the tokenizer lives in that cache).
    """
    sources.quiet_transformers()
    spec = resolve_spec(name_or_path)
    with offline():
        where, _ = _weights_dir(spec)
    return _load_tokenizer(spec, where)


def _fix_tokenizer(tok: Any) -> Any:
    """Decoder tokenizers often lack a pad token; batching needs one (it is always masked out)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _weights_dir(spec: ModelSpec) -> tuple[Path | str | None, str]:
    """(folder or hub id with real weights, source label), or (None, reason) when there is none."""
    if spec.local_path:
        return Path(spec.local_path), f"local {spec.local_path}"
    if (d := sources.user_model_dir(spec.name)) is not None:
        return d, f"local {d}"
    if (p := sources.packaged_weights(spec)) is not None:
        if p.suffix == ".gguf":
            return sources.gguf_safetensors_cache(spec, p), f"package {spec.package} (GGUF, dequantised)"
        return p, f"package {spec.package}"
    if sources.hub_allowed() and spec.hub_id:
        return spec.hub_id, f"hub {spec.hub_id}"
    return None, "none"


def _no_weights(spec: ModelSpec) -> MissingResourceError:
    hint = f"install the `{spec.package}` package, " if spec.package else ""
    return MissingResourceError(
        f"no real weights for {spec.name} here: {hint}put a copy in $P3EFT_MODELS/{spec.name}, "
        "or set P3EFT_ALLOW_HUB=1 to download it"
    )


def _build_random(factory: Any, cfg: Any) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return factory(cfg)


def load_causal_lm(
    name_or_path: str | Path, *, dtype: torch.dtype = torch.float32, allow_random: bool = True
) -> LoadedModel:
    """A decoder LM (GPT-2 or Llama family) in eval mode, with its tokenizer (offline unless the hub is allowed)."""
    with offline():
        return _load_causal_lm(name_or_path, dtype=dtype, allow_random=allow_random)


def _load_causal_lm(name_or_path: str | Path, *, dtype: torch.dtype, allow_random: bool) -> LoadedModel:
    sources.quiet_transformers()
    from transformers import AutoModelForCausalLM

    spec = resolve_spec(name_or_path)
    if spec.family == "bert":
        raise P3eftError(
            f"{spec.name} is a BERT encoder, not a causal LM; use it for sequence classification"
        )
    where, source = _weights_dir(spec)
    if where is not None:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
        tok = _load_tokenizer(spec, where)
        random = False
    else:
        if not allow_random:
            raise _no_weights(spec)
        model = _build_random(AutoModelForCausalLM.from_config, spec.hf_config()).to(dtype)
        tok = _load_tokenizer(spec, None)
        random, source = True, f"random init from config (seed {RANDOM_INIT_SEED})"
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=spec, weights_random=random, source=source)


def load_sequence_classifier(
    name_or_path: str | Path,
    *,
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    allow_random: bool = True,
) -> LoadedModel:
    """An encoder (or decoder) with a sequence-classification head.

    The head is always freshly initialised (seeded) since no registry model ships one; the body keeps
    its real weights when they are available. Offline unless the hub is allowed.
    """
    with offline():
        return _load_sequence_classifier(
            name_or_path, num_labels=num_labels, dtype=dtype, allow_random=allow_random
        )


def _load_sequence_classifier(
    name_or_path: str | Path, *, num_labels: int, dtype: torch.dtype, allow_random: bool
) -> LoadedModel:
    sources.quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    spec = resolve_spec(name_or_path)
    where, source = _weights_dir(spec)
    if where is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = AutoModelForSequenceClassification.from_pretrained(
                where, num_labels=num_labels, dtype=dtype
            )
        tok = _load_tokenizer(spec, where)
        random = False
    else:
        if not allow_random:
            raise _no_weights(spec)
        cfg = spec.hf_config()
        cfg.num_labels = num_labels
        model = _build_random(AutoModelForSequenceClassification.from_config, cfg).to(dtype)
        tok = _load_tokenizer(spec, None)
        random, source = True, f"random init from config (seed {RANDOM_INIT_SEED})"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=spec, weights_random=random, source=source)
