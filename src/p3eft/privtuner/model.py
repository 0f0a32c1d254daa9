"""The plaintext encoder PrivTuner computes on: BERT weights as NumPy arrays, cut to k layers.

Three sources: ``minilm-l6`` (real weights from its asset package, via :mod:`p3eft.models`),
``bert-tiny`` (the cost/speed shape, built from its config with seeded random weights), and ``tiny``
(a very small BERT config for fast tests). The classification head follows BERT: pooler
(dense + tanh on the first token) and a linear classifier; the classifier is trained, the pooler is
frozen, as with peft's ``SEQ_CLS`` task (``modules_to_save=["classifier"]``).

Why NumPy and not the torch module: the approximate twin and the encrypted path run the same
arithmetic on explicit arrays (float64), so nothing hidden inside a torch module can differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.errors import P3eftError

TINY_CONFIG = {"hidden": 32, "heads": 2, "intermediate": 64, "layers": 2, "vocab": 120, "positions": 64}


@dataclass
class LayerWeights:
    """One BERT layer; matrices are (out, in) as in torch.nn.Linear."""

    wq: np.ndarray
    bq: np.ndarray
    wk: np.ndarray
    bk: np.ndarray
    wv: np.ndarray
    bv: np.ndarray
    wo: np.ndarray
    bo: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray


@dataclass
class EncoderWeights:
    """A BERT encoder with pooler and classifier (all float64)."""

    name: str
    hidden: int
    heads: int
    intermediate: int
    word: np.ndarray
    position: np.ndarray
    token_type: np.ndarray
    emb_ln_g: np.ndarray
    emb_ln_b: np.ndarray
    layers: list[LayerWeights]
    pooler_w: np.ndarray
    pooler_b: np.ndarray
    classifier_w: np.ndarray
    classifier_b: np.ndarray
    ln_eps: float = 1e-12
    pad_token_id: int = 0
    weights_random: bool = True
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def num_labels(self) -> int:
        return self.classifier_w.shape[0]


def _np(t: Any) -> np.ndarray:
    return t.detach().to("cpu").double().numpy().copy()


def from_hf(model: Any, layers: int, name: str, weights_random: bool, source: str) -> EncoderWeights:
    """Read a transformers ``BertForSequenceClassification`` into arrays, keeping its first ``layers``."""
    bert = model.bert
    cfg = model.config
    if layers > cfg.num_hidden_layers:
        raise P3eftError(f"{name} has {cfg.num_hidden_layers} layers; cannot keep {layers}")
    if bert.pooler is None:
        raise P3eftError(f"{name} has no pooler")
    out = []
    for lay in bert.encoder.layer[:layers]:
        att, so = lay.attention.self, lay.attention.output
        out.append(
            LayerWeights(
                _np(att.query.weight),
                _np(att.query.bias),
                _np(att.key.weight),
                _np(att.key.bias),
                _np(att.value.weight),
                _np(att.value.bias),
                _np(so.dense.weight),
                _np(so.dense.bias),
                _np(so.LayerNorm.weight),
                _np(so.LayerNorm.bias),
                _np(lay.intermediate.dense.weight),
                _np(lay.intermediate.dense.bias),
                _np(lay.output.dense.weight),
                _np(lay.output.dense.bias),
                _np(lay.output.LayerNorm.weight),
                _np(lay.output.LayerNorm.bias),
            )
        )
    emb = bert.embeddings
    return EncoderWeights(
        name=name,
        hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        intermediate=cfg.intermediate_size,
        word=_np(emb.word_embeddings.weight),
        position=_np(emb.position_embeddings.weight),
        token_type=_np(emb.token_type_embeddings.weight),
        emb_ln_g=_np(emb.LayerNorm.weight),
        emb_ln_b=_np(emb.LayerNorm.bias),
        layers=out,
        pooler_w=_np(bert.pooler.dense.weight),
        pooler_b=_np(bert.pooler.dense.bias),
        classifier_w=_np(model.classifier.weight),
        classifier_b=_np(model.classifier.bias),
        ln_eps=float(cfg.layer_norm_eps),
        pad_token_id=int(cfg.pad_token_id or 0),
        weights_random=weights_random,
        source=source,
        meta={"layers_kept": layers, "layers_total": cfg.num_hidden_layers},
    )


def tiny_hf_model(num_labels: int = 2, seed: int = 0, **overrides: int) -> Any:
    """A very small ``BertForSequenceClassification`` with seeded random weights (tests)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    c = {**TINY_CONFIG, **overrides}
    cfg = BertConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        intermediate_size=c["intermediate"],
        max_position_embeddings=c["positions"],
        type_vocab_size=2,
        pad_token_id=0,
        num_labels=num_labels,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg)
        # random LayerNorm affine parameters, so tests exercise gamma/beta (fresh BERT has 1 and 0)
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.data = 1.0 + 0.1 * torch.randn_like(p)
            elif "LayerNorm.bias" in name or name.endswith(".bias"):
                p.data = 0.05 * torch.randn_like(p)
    model.eval()
    return model


def load_hf_model(name: str, num_labels: int = 2, seed: int = 0) -> tuple[Any, Any, bool, str]:
    """(torch model, tokenizer or None, weights_random, source) for ``tiny`` or a registry name."""
    if name == "tiny":
        return tiny_hf_model(num_labels, seed), None, True, f"tiny BERT config, random init (seed {seed})"
    from p3eft.models.loading import load_sequence_classifier

    loaded = load_sequence_classifier(name, num_labels=num_labels)
    if loaded.spec.family != "bert":
        raise P3eftError(f"PrivTuner runs BERT encoders; {name} is a {loaded.spec.family} model")
    return loaded.model, loaded.tokenizer, loaded.weights_random, loaded.source


def load_encoder(name: str, layers: int, num_labels: int = 2, seed: int = 0) -> EncoderWeights:
    """The plaintext encoder cut to its first ``layers`` layers, as float64 arrays."""
    model, _, random, source = load_hf_model(name, num_labels, seed)
    return from_hf(model, layers, name, random, source)
