"""The encrypted BERT (:mod:`p3eft.privtuner.encrypted`) behind the protocol's contract (ours).

:class:`BertBackend` is the model owner's :class:`~p3eft.privtuner.contract.ModelBackend`: the plaintext
encoder, the calibrated approximations, and per session a fresh secret rotation (drawn from the OS
CSPRNG), an :class:`~p3eft.privtuner.encrypted.EncryptedEncoder` on the data owner's public context
and an :class:`~p3eft.privtuner.adapter.EncryptedAdapter` initialised in plaintext and encrypted with
that data owner's public key. :class:`BertCodec` is the data owner's
:class:`~p3eft.privtuner.contract.ClientCodec`, built from the public session setup only (rotated
tables, geometry): it tokenises, embeds with the rotated tables and packs.

Calibration (ours): the model owner fits the approximations' ranges on *public* text of the task
before any data owner connects (:func:`calibration_examples`: the last sentences of the SST-2
training file, never the first ones that the data owners of our experiments train on). A value that
leaves its range is flagged by the twin (:func:`p3eft.privtuner.calibration.check_ranges`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.errors import P3eftError, ProtocolError
from p3eft.fhe.context import Ciphertext, CkksContext, Layout
from p3eft.fhe.nonlinear import Refresher
from p3eft.fhe.parallel import KernelPool
from p3eft.privtuner.adapter import EncryptedAdapter, from_peft_names, peft_names
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.encrypted import (
    EncryptedEncoder,
    check_chain_depth,
    required_galois_steps,
    rotation_steps,
)
from p3eft.privtuner.packing import PackingSpec, pack_dlogits, pack_example, unpack_logits
from p3eft.privtuner.rotation import embed
from p3eft.privtuner.standardize import HeadStandardizer
from p3eft.privtuner.twin import Example, PrivTunerModel

CALIBRATION_EXAMPLES = 16
# refresh ceilings per model (ours, from calibration): MiniLM's [CLS] row has squared deviations near
# 5e4 in its LayerNorms, far above the config's default ceiling
REFRESH_BOUNDS = {"minilm-l6": 2.0**20}


def settings(
    model: str = "minilm-l6",
    layers: int = 2,
    max_len: int = 64,
    rank: int = 8,
    alpha: float = 8.0,
    lr: float = 1e-3,
    param_set: str | None = None,
    seed: int = 0,
    head_standardize: bool = True,
    rotation_keys: str = "exact",
) -> PrivTunerConfig:
    """The public configuration both parties agree on (checked: >= 128-bit chain, lambda >= 30...)."""
    kw: dict[str, Any] = {
        "head_standardize": head_standardize,
        "model": model,
        "layers": layers,
        "max_len": max_len,
        "lora_rank": rank,
        "lora_alpha": alpha,
        "lr": lr,
        "seed": seed,
        "rotation_keys": rotation_keys,
    }
    if param_set is not None:
        kw["param_set"] = param_set
    if model in REFRESH_BOUNDS:
        kw["refresh_bound"] = REFRESH_BOUNDS[model]
    if model not in ("tiny", "bert-tiny", "minilm-l6"):
        from p3eft.models.registry import get_spec

        if get_spec(model).family != "bert":
            raise P3eftError(f"PrivTuner runs BERT encoders; {model} is not one")
    return PrivTunerConfig(**kw)


# --- tokens (both sides agree; the data owner runs it) -------------------------------------------------


def _tiny_ids(text: str, vocab: int, n: int) -> list[int]:
    """Test-only tokeniser of the ``tiny`` config (no vocabulary file): hashed words in 2..vocab-1,
    with 1 as the first token."""
    words = [
        int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little") % (vocab - 2) + 2
        for w in text.split()
    ]
    return [1, *words][:n]


class Tokens:
    """Text -> :class:`~p3eft.privtuner.twin.Example` (padded ids) for one model and geometry."""

    def __init__(self, model: str, vocab: int, pad_id: int, seq: int, max_len: int) -> None:
        self.model, self.vocab, self.pad_id, self.seq, self.max_len = model, vocab, pad_id, seq, max_len
        if model == "tiny":
            self._tok = None
        else:
            from p3eft.models.loading import load_tokenizer

            self._tok = load_tokenizer(model)

    def example(self, text: str, label: int = 0) -> Example:
        if self._tok is None:
            ids = _tiny_ids(text, self.vocab, self.max_len)
        else:
            ids = list(self._tok(text, truncation=True, max_length=self.max_len)["input_ids"])
        padded = np.full(self.seq, self.pad_id, dtype=np.int64)
        padded[: len(ids)] = ids
        return Example(padded, len(ids), int(label))


# --- model owner ----------------------------------------------------------------------------------------


def calibration_examples(model: PrivTunerModel, tokens: Tokens, n: int = CALIBRATION_EXAMPLES, data_dir=None):
    """Public calibration text (ours): the last ``n`` sentences of the SST-2 training file."""
    from p3eft.data import load_task

    task = load_task("sst2", "train", data_dir=data_dir)
    return [tokens.example(e.text, e.label) for e in task.examples[-n:]]


@dataclasses.dataclass
class BertEncryptedModel:
    """One session's encrypted encoder + adapter (the contract's ``EncryptedModel``)."""

    encoder: EncryptedEncoder
    adapter: EncryptedAdapter
    refresher: Refresher

    def forward(self, inputs: list[Ciphertext], key: str | None, train: bool) -> Ciphertext:
        return self.encoder.forward(inputs, self.adapter, cache_key=key, keep=train)

    def backward(self, dlogits: list[Ciphertext]) -> None:
        self.encoder.backward(dlogits)

    def apply_sgd(self, lr: float) -> None:
        self.adapter.apply_sgd(lr, self.refresher)

    def adapter_ciphertexts(self) -> dict[str, list[Ciphertext]]:
        return self.adapter.mats

    def load_adapter(self, mats: dict[str, list[Ciphertext]]) -> None:
        self.adapter.mats = {k: list(v) for k, v in mats.items()}
        self.adapter.grads = {}

    def stats(self) -> dict[str, Any]:
        return self.encoder.stats


class BertSessionSpec:
    """A session before the data owner's keys: its own secret rotation and initial parameters."""

    def __init__(self, backend: BertBackend, init_seed: int) -> None:
        # a fresh secret rotation per session: the model derives it from its config's seed, so the
        # session's copy gets a secret seed from the OS CSPRNG (the weights are shared, not copied)
        secret_seed = int.from_bytes(os.urandom(8), "little")
        self.model = PrivTunerModel(
            dataclasses.replace(backend.cfg, seed=secret_seed), weights=backend.model.weights
        )
        self.backend = backend
        self.init = (
            backend.init_params if backend.init_params is not None else backend.initial_params(init_seed)
        )

    def public_setup(self) -> dict[str, Any]:
        m, cfg = self.model, self.model.cfg
        return {
            "model": cfg.model,
            "config": {k: v for k, v in cfg.to_dict().items() if k not in ("extra", "seed")}
            | {"seed": self.backend.cfg.seed},
            "spec": dataclasses.asdict(m.spec),
            "vocab": int(m.weights.word.shape[0]),
            "pad_token_id": int(m.weights.pad_token_id),
            "num_labels": int(m.weights.num_labels),
            "hidden": int(m.weights.hidden),
            "tables": m.rotated_tables(),
            "head_std": None if self.backend.fns.head_std is None else self.backend.fns.head_std.to_dict(),
        }

    def bind(
        self, ctx: CkksContext, refresher: Refresher, pool: KernelPool | None = None
    ) -> BertEncryptedModel:
        enc = EncryptedEncoder(self.model, self.backend.fns, ctx, refresher, pool)
        return BertEncryptedModel(enc, EncryptedAdapter.encrypt(ctx, self.model, self.init), refresher)


class BertBackend:
    """The model owner's encrypted BERT service (the contract's ``ModelBackend``)."""

    def __init__(
        self,
        cfg: PrivTunerConfig,
        data_dir: str | Path | None = None,
        model: PrivTunerModel | None = None,
        calibration: Any = None,
        init_params: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Load ``cfg``'s model and calibrate on public text; or take an already built ``model`` and
        ``calibration`` report (tests). ``init_params`` fixes every session's initial adapter."""
        from p3eft.privtuner.calibration import calibrate

        self.cfg = cfg
        self.name = cfg.model
        self.model = model if model is not None else PrivTunerModel(cfg)
        self.params = cfg.params
        self.galois_steps = required_galois_steps(self.model)
        self.rotation_steps = rotation_steps(self.model)
        self.refresh_bound = float(cfg.refresh_bound)
        self.refresh_lambda = int(cfg.refresh_lambda)
        self.tokens = tokens_for(self.model)
        self.init_params = init_params
        if calibration is None:
            examples = calibration_examples(self.model, self.tokens, data_dir=data_dir)
            calibration = calibrate(self.model, examples, self.model.init_params())
        self.calibration = calibration
        self.fns = calibration.fns
        check_chain_depth(self.params, self.fns, self.refresh_bound, self.refresh_lambda)

    @property
    def fingerprint(self) -> str:
        """What a training checkpoint's adapter means: the model, its cut, the LoRA shape, the head's
        standardization and the CKKS chain (not the learning rate, seed or data order, which a resumed
        run may keep or change; nor which Galois keys the data owner made, which the keys themselves
        carry). Bound into the model owner's checkpoint tags."""
        skip = ("lr", "seed", "extra", "rotation_keys")
        desc = {
            "config": {k: v for k, v in self.cfg.to_dict().items() if k not in skip},
            "weights": str(self.model.weights.source),
            "head_std": None if self.fns.head_std is None else self.fns.head_std.to_dict(),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()

    def initial_params(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """A session's initial adapter and head as the graph takes them (the head standardized when the
        calibration fixed a standardization)."""
        return self.model.init_params(seed=seed, head_std=self.fns.head_std)

    def plain_params(self, mats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's parameter matrices -> plain LoRA factors and the plain head."""
        return self.model.plain_params(mats, self.fns.head_std)

    def params_from_export(self, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An exported (decrypted, peft-named) adapter and plain head -> the graph's parameter matrices,
        the head standardized again as the session's (the inverse of :meth:`plain_params` after
        :func:`~p3eft.privtuner.adapter.peft_names`)."""
        return self.model.matrices_from_plain(from_peft_names(named), self.fns.head_std)

    def open_session(self, seed: int | None) -> BertSessionSpec:
        return BertSessionSpec(self, self.cfg.seed if seed is None else int(seed))


def tokens_for(model: PrivTunerModel) -> Tokens:
    w = model.weights
    return Tokens(
        model.cfg.model, int(w.word.shape[0]), int(w.pad_token_id), model.spec.seq, model.cfg.max_len
    )


def build_backend(cfg: PrivTunerConfig, data_dir: str | Path | None = None) -> BertBackend:
    return BertBackend(cfg, data_dir)


# --- data owner ------------------------------------------------------------------------------------------


class BertCodec:
    """The data owner's side of the encrypted BERT, from the public session setup only."""

    def __init__(self, setup: dict[str, Any]) -> None:
        try:
            self.spec = PackingSpec(**{k: int(v) for k, v in setup["spec"].items()})
            self.tables = {k: np.asarray(v, dtype=np.float64) for k, v in setup["tables"].items()}
            self.num_labels = int(setup["num_labels"])
            self.hidden = int(setup["hidden"])
            self.head_std = HeadStandardizer.from_dict(setup.get("head_std"), self.hidden)
            self.config = dict(setup["config"])
            if bool(self.config.get("head_standardize", False)) != (self.head_std is not None):
                raise ProtocolError("the session setup's head standardization does not match its config")
            self.tokens = Tokens(
                str(setup["model"]),
                int(setup["vocab"]),
                int(setup["pad_token_id"]),
                self.spec.seq,
                int(self.config["max_len"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise P3eftError(f"malformed PrivTuner session setup: {err}") from err

    def example(self, text: str, label: int = 0) -> Example:
        return self.tokens.example(text, label)

    def encode(self, text: str) -> list[tuple[np.ndarray, Layout]]:
        ex = self.example(text)
        return pack_example(self.spec, embed(self.tables, ex.ids), ex.length)

    def logits(self, values: np.ndarray, layout: Layout) -> np.ndarray:
        return unpack_logits(self.spec, values, self.num_labels)

    def dlogits_slots(self, dlogits: np.ndarray, layout: Layout) -> list[tuple[np.ndarray, Layout]]:
        return pack_dlogits(self.spec, dlogits)

    def adapter(self, decrypted: dict[str, list[tuple[np.ndarray, Layout]]]) -> dict[str, np.ndarray]:
        from p3eft.privtuner.graph import matrices_to_params

        mats = {k: self.spec.unpack_matrix([v for v, _ in blobs]) for k, blobs in decrypted.items()}
        cfg = PrivTunerConfig(**{k: v for k, v in self.config.items()})
        return peft_names(matrices_to_params(self.spec, cfg, self.hidden, mats, self.head_std))


def export_base(setup_or_cfg: dict[str, Any] | PrivTunerConfig) -> Any:
    """The plaintext base model an exported adapter applies to: the HF encoder cut to k layers."""
    from p3eft.privtuner.model import load_hf_model

    if isinstance(setup_or_cfg, PrivTunerConfig):
        name, layers, labels, seed = (
            setup_or_cfg.model,
            setup_or_cfg.layers,
            setup_or_cfg.num_labels,
            setup_or_cfg.seed,
        )
    else:
        c = setup_or_cfg["config"]
        name, layers, labels, seed = c["model"], int(c["layers"]), int(c["num_labels"]), int(c["seed"])
    model, _, _, _ = load_hf_model(name, labels, seed)
    model.bert.encoder.layer = model.bert.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    return model.eval()
