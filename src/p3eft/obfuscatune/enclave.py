"""The enclave's role (TEE): the plaintext parts of the model, the masks, the loss.

After ``provision`` the enclave holds a Hugging Face model whose boundary linears are stand-ins
(:class:`~p3eft.obfuscatune.split.BoundaryLinear`); it draws the masks from its session secret,
uploads the obfuscated weights to the untrusted cloud and forgets the plaintext weights. Each boundary
is a custom autograd function: forward masks the activation, sends it, unmasks the answer; backward
sends the masked gradient and unmasks the gradient that comes back. So the HF forward (RoPE, GQA,
causal masks, KV cache for generation) runs unchanged inside the enclave.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p3eft.channel import Channel, remote
from p3eft.errors import ProtocolError, SecurityError
from p3eft.obfuscatune.masks import Mask, MaskFamily, parse_masks
from p3eft.obfuscatune.mixing import Defence, RowMix, draw_mix, parse_defence
from p3eft.obfuscatune.split import (
    BoundaryGroup,
    GroupLink,
    SplitModel,
    hidden_size,
    mask_sides,
    split_model,
)
from p3eft.runtime import codec
from p3eft.tuning.lm_data import IGNORE_INDEX
from p3eft.tuning.lora import LoraSettings

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
UPLOAD_CHUNK_BYTES = 16 * 2**20  # ours: each load_weight message carries at most this many bytes
# The default configuration, chosen by the measured attack suite (docs/obfuscatune.md, "What the untrusted
# side sees"): structured masks keep the enclave's arithmetic small, fresh row mixing hides the rows.
DEFAULT_MODE = "strict"
# kron:12: Kronecker factors of at most 12 (GPT2-XL's width 1600 = 5x5x8x8, SmolLM2's 576 = 6x8x12 and
# GPT-2's 768 = 8x8x12 as under the bound 16): a bound whose enclave arithmetic (bounds 13-15 give the same
# factors at these widths) meets the 10% goal for GPT2-XL at 512-row full-logit calls with span filling (9.9% against kron:16's
# 10.1%), for fewer continuous degrees of freedom at 1600 (76 instead of 210), which no measured attack
# uses (docs/obfuscatune.md, "The frontier")
DEFAULT_MASKS = "kron:12"
DEFAULT_DEFENCE = "mix:4+fill"
PAPER_MODE_WARNING = (
    "ObfuscaTune --mode paper gives the untrusted side clear Q/K/V and one-sided masked weights: against an "
    "attacker holding the public base model it protects neither the prompts (without row mixing) nor the "
    "weights (measured: docs/obfuscatune.md, 'What the untrusted side sees'); use it for the paper's ablation only"
)


def labelled_positions_loss(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The causal-LM loss of ``model(..., labels=labels)``, with the LM head applied only at the
    positions that carry a label (ours).

    The head is the enclave's largest single cost (GPT2-XL: 2 x 1600 x 50257 FLOPs per position, more
    than half of its arithmetic), and a fine-tuning loss usually covers a minority of positions (the
    answer, not the question; never the padding). The transformer body runs as before; its last
    hidden states at the positions whose next token is labelled go through the head, and the loss is
    their mean cross-entropy, as transformers computes it (labels shifted by one, ``-100`` ignored,
    logits at least float32), except that float64 logits stay float64 (transformers casts them down
    to float32, which would cap the float64 exactness checks at ~1e-7). Same loss and gradients up
    to float summation order."""
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    logits = head_at(model, input_ids, attention_mask, keep)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.nn.functional.cross_entropy(logits, targets[keep[:, :-1]])


def head_at(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The logits at the marked ``positions`` only (``[N, V]``, in row-major order of the mask): the
    transformer body runs on every position, the LM head only on the marked ones (ours)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[positions])


@dataclass
class EnclaveSettings:
    """How the enclave obfuscates. ``session_seed`` None = 32 fresh bytes from ``secrets`` (CSPRNG);
    ``sealing_key`` (32 bytes) seals ``state()`` checkpoints, as a TEE's sealing key would.
    ``defence``: ``mix:K`` sends fresh random combinations of K rows plus a noise row, ``mix:K+fill``
    (default) adds random rows until every call's rows span the width (:mod:`p3eft.obfuscatune.mixing`);
    ``none`` sends the masked rows themselves."""

    mode: str = DEFAULT_MODE
    masks: str = DEFAULT_MASKS
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    dtype: str = "float32"
    session_seed: bytes | None = None
    sealing_key: bytes | None = None
    cloud_seed: int | None = None  # seed of the cloud's LoRA init / dropout (None: from the CSPRNG)
    defence: str = DEFAULT_DEFENCE

    @property
    def lora(self) -> LoraSettings:
        """The LoRA settings as the one object shared with plain training (p3eft.tuning.lora)."""
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout)

    def with_lora(self, lora: LoraSettings) -> EnclaveSettings:
        """These settings with ``lora``'s rank, alpha and dropout."""
        return replace(self, lora_r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("session_seed")
        d.pop("sealing_key")
        return d


@dataclass
class _Boundary:
    group: BoundaryGroup
    mask_in: Mask | None
    masks_out: list[Mask | None]


@dataclass
class _Cache:
    x: torch.Tensor
    outs: tuple[torch.Tensor, ...]
    served: set[int] = field(default_factory=set)


class _BoundaryFn(torch.autograd.Function):
    """Masked forward / masked backward across the boundary (the cloud keeps the LoRA graph).

    ``x_lora`` (or None) is the LoRA branch's dropped-out input, when the enclave draws the dropout."""

    @staticmethod
    def forward(ctx, anchor, x, x_lora, link, tag):  # noqa: D401
        ctx.link, ctx.tag, ctx.has_lora = link, tag, x_lora is not None
        return tuple(link.send_forward(x, tag, x_lora))

    @staticmethod
    def backward(ctx, *grads):
        gx, gx_lora = ctx.link.send_backward(list(grads), ctx.tag, ctx.has_lora)
        return None, gx, gx_lora, None, None


class _Link(GroupLink):
    def __init__(self, enclave: Enclave, boundary: _Boundary) -> None:
        self.enclave = enclave
        self.b = boundary
        self.cache: _Cache | None = None
        self.mixes: dict[str, RowMix] = {}  # tag -> this call's secret row mixing (for the backward)

    def send_forward(
        self, x: torch.Tensor, tag: str | None, x_lora: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        b = self.b
        lead, dtype = x.shape[:-1], x.dtype
        xs = b.mask_in.right(x) if b.mask_in is not None else x
        xl = None if x_lora is None else (b.mask_in.right(x_lora) if b.mask_in is not None else x_lora)
        mix = self.enclave.draw_mix(xs.reshape(-1, xs.shape[-1]).shape[0], xs.shape[-1], tag)
        if mix is not None:
            xs = mix.mix(xs.reshape(-1, xs.shape[-1]))
            xl = None if xl is None else mix.mix(xl.reshape(-1, xl.shape[-1]))
            if tag is not None:
                self.mixes[tag] = mix
        payload = {"x_lora": xl.contiguous()} if xl is not None else {}
        ys = self.enclave.cloud.call("forward", layer=b.group.layer, x=xs.contiguous(), tag=tag, **payload)
        if len(ys) != len(b.masks_out):
            raise ProtocolError(f"{b.group.layer}: cloud returned {len(ys)} outputs")
        if mix is not None:
            ys = [mix.unmix(y.to(dtype)).reshape(*lead, y.shape[-1]) for y in ys]
        return [
            (m.right_inv(y.to(dtype)) if m is not None else y.to(dtype))
            for y, m in zip(ys, b.masks_out, strict=True)
        ]

    def send_backward(
        self, grads: list[torch.Tensor], tag: str, has_lora: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.b
        lead = grads[0].shape[:-1]
        # y = y* R_out^-1  =>  dL/dy* = dL/dy R_out^-T ;  x* = x R_in  =>  dL/dx = dL/dx* R_in^T
        gs = [
            (m.right_inv_t(g) if m is not None else g).contiguous()
            for g, m in zip(grads, b.masks_out, strict=True)
        ]
        mix = self.mixes.pop(tag, None)
        if mix is not None:
            gs = [mix.mix_grad(g.reshape(-1, g.shape[-1])).contiguous() for g in gs]
        back = self.enclave.cloud.call("backward", layer=b.group.layer, grads=gs, tag=tag)
        outs = list(back) if isinstance(back, list) else [back]
        if mix is not None:
            outs = [mix.unmix_grad(o.to(grads[0].dtype)).reshape(*lead, o.shape[-1]) for o in outs]
        outs = [o.to(grads[0].dtype) for o in outs]
        outs = [b.mask_in.right_t(o) if b.mask_in is not None else o for o in outs]
        return outs[0], (outs[1] if has_lora else None)

    def output(self, x: torch.Tensor, part: int) -> torch.Tensor:
        c = self.cache
        if c is not None and c.x is x and part not in c.served:
            c.served.add(part)
            if len(c.served) == len(c.outs):
                self.cache = None
            return c.outs[part]
        if torch.is_grad_enabled():
            tag = self.enclave.next_tag()
            x_lora = self.enclave.lora_dropout(x)
            outs = _BoundaryFn.apply(self.enclave.anchor, x, x_lora, self, tag)
        else:
            outs = tuple(self.send_forward(x, None))
        if len(outs) > 1:
            self.cache = _Cache(x, outs, {part})
        return outs[part]


class Enclave:
    """The TEE role: see the party contract in ``docs/obfuscatune.md``."""

    def __init__(self, cloud: Channel, settings: EnclaveSettings | None = None) -> None:
        self.cloud = cloud
        self.settings = settings or EnclaveSettings()
        s = self.settings
        if s.dtype not in _DTYPES:
            raise ProtocolError(f"enclave dtype must be float32 or float64, not {s.dtype!r}")
        mask_sides(s.mode, "attn_in")  # validates the mode
        if s.mode == "paper":
            warnings.warn(PAPER_MODE_WARNING, UserWarning, stacklevel=2)
        self._family: MaskFamily = parse_masks(s.masks)
        self._defence: Defence = parse_defence(s.defence)
        self._nonce = secrets.token_hex(8)  # inference-time mixing labels never repeat across instances
        self._mix_calls = 0
        self._secret = s.session_seed if s.session_seed is not None else secrets.token_bytes(32)
        self._sealing_key = s.sealing_key if s.sealing_key is not None else secrets.token_bytes(32)
        self.dtype = _DTYPES[s.dtype]
        self.epoch = 0
        self._step = 0
        self._calls = 0
        self._config: dict | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self.split: SplitModel | None = None
        self._boundaries: dict[str, _Boundary] = {}
        self._train_cfg: dict[str, Any] = {
            "name": "adamw",
            "lr": 3e-5,
            "weight_decay": 0.0,
            "momentum": 0.0,
            "max_grad_norm": 0.0,
        }
        self.anchor = torch.zeros((), requires_grad=True)  # makes autograd call every boundary's backward
        self._meta: dict[str, Any] = {}
        self._cloud_state_pending: dict | None = None
        self._refresh_adapters: dict | None = None

    # ----------------------------------------------------------------- model owner
    @remote
    def provision(
        self,
        config: dict | None = None,
        tensors: dict | None = None,
        done: bool = False,
        meta: dict | None = None,
        refresh: bool = False,
    ) -> dict:
        """Receive the plaintext model (config first, then state-dict slices); ``done`` splits and uploads.

        ``meta`` may carry ``{"name": str, "weights_random": bool}`` for reports. ``refresh=True`` on a
        provisioned enclave re-provisions the same model under a fresh mask epoch (the enclave keeps no
        plaintext weights, so the model owner sends them again): the trained adapters are carried over
        exactly (mapped through plain coordinates); the optimizer state starts afresh (ours).
        """
        if config is not None:
            if self.split is not None and not refresh:
                raise ProtocolError(
                    "this enclave is already provisioned (pass refresh=True to draw new masks)"
                )
            if self.split is not None:
                self._refresh_adapters = self.export_adapter()["tensors"]
                self.split, self._boundaries = None, {}
                self.epoch += 1
            self._config, self._pending = dict(config), {}
        if self._config is None:
            raise ProtocolError("provision: send the config first")
        if meta:
            self._meta.update(meta)
        for k, v in (tensors or {}).items():
            self._pending[k] = v
        if not done:
            return {"received": len(self._pending)}
        self._build()
        return self.info()

    def _build(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg_dict = dict(self._config)
        model_type = cfg_dict.pop("model_type", None)
        if model_type is None:
            raise ProtocolError("provision: config has no model_type")
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
        model = AutoModelForCausalLM.from_config(cfg)
        missing, unexpected = model.load_state_dict(self._pending, strict=False)
        tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", True) else set()
        if unexpected or set(missing) - tied:
            raise ProtocolError(
                f"provision: state dict does not fit (missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
        self._pending = {}
        model.to(self.dtype)
        model.eval()
        self.split = split_model(model)
        self._obfuscate_and_upload()
        if self._refresh_adapters is not None:
            self.import_adapter(self._refresh_adapters)
            self._refresh_adapters = None

    def _masks_for(self, g: BoundaryGroup) -> _Boundary:
        sides = mask_sides(self.settings.mode, g.role)
        fam = self._family.with_chunk(hidden_size(self.split.enclave_model))
        label = f"e{self.epoch}/{g.layer}"
        mask_in = fam.make(self._secret, f"{label}/in", g.d_in, self.dtype) if sides.input else None
        masks_out = [
            fam.make(self._secret, f"{label}/out{k}", p.d_out, self.dtype) if sides.output else None
            for k, p in enumerate(g.parts)
        ]
        return _Boundary(g, mask_in, masks_out)

    def _obfuscate_and_upload(self) -> None:
        from tqdm.auto import tqdm

        s = self.settings
        cloud_seed = (
            s.cloud_seed
            if s.cloud_seed is not None
            else int.from_bytes(
                hashlib.blake2b(self._secret, digest_size=8, person=b"p3eft-cloud").digest(), "little"
            )
            >> 1
        )
        self.cloud.call(
            "configure",
            # with row mixing the enclave draws the LoRA dropout itself (see lora_dropout)
            lora=replace(s.lora, dropout=0.0 if self._defence.kind == "mix" else s.lora_dropout).to_wire(),
            dtype=s.dtype,
            seed=cloud_seed,
        )
        split = self.split
        for g in tqdm(
            split.groups,
            desc=f"obfuscate+upload ({s.masks} masks)",
            # The enclave's own bar, on its own stderr (a server log when networked): only on a terminal
            # (tqdm's None), never in logs, pipes or a caller's --no-progress run captured to a file.
            disable=True if len(split.groups) < 16 else None,
            leave=False,
        ):
            b = self._masks_for(g)
            for k, part in enumerate(g.parts):
                w = split.weights.pop(part.path).to(self.dtype)
                w_star = obfuscate_weight(w, b.mask_in, b.masks_out[k])
                del w
                rows = max(1, UPLOAD_CHUNK_BYTES // max(1, w_star.shape[1] * w_star.element_size()))
                for r0 in range(0, w_star.shape[0], rows):
                    self.cloud.call(
                        "load_weight",
                        layer=g.layer,
                        part=k,
                        weight=w_star[r0 : r0 + rows].contiguous(),
                        row_start=r0,
                        rows_total=w_star.shape[0],
                    )
            self._boundaries[g.layer] = b
            link = _Link(self, b)
            for part in g.parts:
                split.stubs[part.path].link = link
        self.cloud.call("init_adapters")
        self.cloud.call("configure_optimizer", **self._train_cfg)
        if self._cloud_state_pending is not None:
            self.cloud.call("load_state", state=self._cloud_state_pending)
            self._cloud_state_pending = None

    # ----------------------------------------------------------------- data owner
    def _require_ready(self) -> SplitModel:
        if self.split is None:
            raise ProtocolError("the enclave has no model yet (the model owner must provision it)")
        return self.split

    def next_tag(self) -> str:
        self._calls += 1
        return f"{self._step}.{self._calls}"

    def draw_mix(self, rows: int, width: int, tag: str | None = None) -> RowMix | None:
        """This call's fresh row mixing (None without the defence). Training calls (``tag``: step and
        call) are labelled by their tag, so a resumed run redraws the same mixing for the same batch
        (bit-identical, and nothing new to the untrusted side); other calls by a per-instance nonce and
        a counter."""
        if self._defence.kind != "mix":
            return None
        self._mix_calls += 1
        label = (
            f"mix/e{self.epoch}/train/{tag}"
            if tag is not None
            else f"mix/e{self.epoch}/{self._nonce}/{self._mix_calls}"
        )
        return draw_mix(self._secret, label, rows, self._defence.layout(rows, width))

    def lora_dropout(self, x: torch.Tensor) -> torch.Tensor | None:
        """With row mixing, the enclave draws LoRA dropout on the plaintext input (exactly PEFT's
        ``lora_B(lora_A(dropout(x)))``) and sends the dropped input beside ``x``: element-wise
        dropout on mixed rows would not commute with the unmixing. Without mixing: None (the cloud
        drops on the masked input, as before)."""
        p = self.settings.lora_dropout
        if self._defence.kind != "mix" or p <= 0 or not self.split.enclave_model.training:
            return None
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= p
        return x * keep / (1.0 - p)

    @remote
    def configure_training(
        self,
        optimizer: str = "adamw",
        lr: float = 3e-5,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        max_grad_norm: float = 0.0,
    ) -> dict:
        self._train_cfg = {
            "name": optimizer,
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "momentum": float(momentum),
            "max_grad_norm": float(max_grad_norm),
        }
        if self.split is not None:
            self.cloud.call("configure_optimizer", **self._train_cfg)
        return {}

    @remote
    def train_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> dict:
        """One LoRA step through the boundary: loss in the enclave, update on the cloud."""
        split = self._require_ready()
        model = split.enclave_model
        model.train()
        self._step += 1
        self._calls = 0
        self.cloud.call("zero_grad")
        try:
            # The enclave's own dropout (GPT-2's attention/residual dropout) draws from a generator
            # seeded by the session secret and the step, not from whatever the process-global RNG
            # went through: in-process, networked and resumed runs then see the same draws.
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                torch.manual_seed(self._dropout_seed())
                loss = labelled_positions_loss(model, input_ids.long(), attention_mask.long(), labels.long())
                loss.backward()
        finally:
            self.cloud.call("release", tag=str(self._step))
            for stub in split.stubs.values():
                if stub.link is not None:
                    stub.link.mixes.clear()
            self.anchor.grad = None
            model.eval()
        self.cloud.call("step")
        return {"loss": float(loss.detach()), "step": self._step}

    def _dropout_seed(self) -> int:
        digest = hashlib.blake2b(
            self._secret + self._step.to_bytes(8, "little"), digest_size=8, person=b"p3eft-dropout"
        ).digest()
        return int.from_bytes(digest, "little") & ((1 << 63) - 1)

    @remote
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        model = self._require_ready().enclave_model
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids.long(), attention_mask=attention_mask.long()).logits

    @remote
    def continuation_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits only where the caller scores (``positions``: a boolean mask shaped like
        ``input_ids``), as ``[N, V]`` in row-major order: the multiple-choice scorer needs the
        continuation's positions, and the LM head, the enclave's largest cost, runs only there.
        The data owner also receives fewer of the fine-tuned model's outputs."""
        model = self._require_ready().enclave_model
        if not isinstance(positions, torch.Tensor) or positions.shape != input_ids.shape:
            raise ProtocolError("positions must be a mask with the shape of input_ids")
        model.eval()
        with torch.no_grad():
            return head_at(model, input_ids.long(), attention_mask.long(), positions.bool())

    @remote
    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``log p(x[t+1] | x[:t+1])`` for t = 0..T-2: all a multiple-choice scorer needs."""
        logits = self.logits(input_ids, attention_mask).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        return logp.gather(-1, input_ids[:, 1:].long().unsqueeze(-1)).squeeze(-1)

    @remote
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int = 16
    ) -> torch.Tensor:
        """Greedy continuation (the KV cache stays in the enclave; only new positions cross)."""
        model = self._require_ready().enclave_model
        model.eval()
        with torch.no_grad():
            cfg = model.generation_config
            pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
            if isinstance(pad, list):
                pad = pad[0]
            out = model.generate(
                input_ids=input_ids.long(),
                attention_mask=attention_mask.long(),
                do_sample=False,
                max_new_tokens=int(max_new_tokens),
                pad_token_id=pad,
            )
        return out[:, input_ids.shape[1] :]

    @remote
    def export_adapter(self) -> dict:
        """The adapters mapped back to plain coordinates, keyed as PEFT saves them.

        ``A_eff = R_in A*`` and ``B_eff = B* R_out^-1``, so ``x A_eff B_eff = (x R_in) A* B* R_out^-1``.
        """
        split = self._require_ready()
        obf = self.cloud.call("adapters")
        tensors = {}
        for g in split.groups:
            b = self._boundaries[g.layer]
            for k, part in enumerate(g.parts):
                a, bb = obf[f"{g.layer}/{k}/A"].to(self.dtype), obf[f"{g.layer}/{k}/B"].to(self.dtype)
                a_eff = b.mask_in.right_t(a.T).T if b.mask_in is not None else a
                b_eff = b.masks_out[k].right_inv(bb) if b.masks_out[k] is not None else bb
                prefix = f"base_model.model.{part.path}"
                tensors[f"{prefix}.lora_A.weight"] = a_eff.T.contiguous()
                tensors[f"{prefix}.lora_B.weight"] = b_eff.T.contiguous()
        s = self.settings
        config = {
            **s.lora.peft_kwargs(split.family),
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": str(self._meta.get("name", "")),
        }
        return {"config": config, "tensors": tensors}

    @remote
    def import_adapter(self, tensors: dict) -> dict:
        """Load a plain-coordinate PEFT adapter (same keys as :meth:`export_adapter`) into the cloud,
        mapped into obfuscated coordinates: ``A* = R_in^-1 A``, ``B* = B R_out``."""
        split = self._require_ready()
        obf = {}
        for g in split.groups:
            b = self._boundaries[g.layer]
            for k, part in enumerate(g.parts):
                prefix = f"base_model.model.{part.path}"
                try:
                    a = tensors[f"{prefix}.lora_A.weight"].to(self.dtype).T
                    bb = tensors[f"{prefix}.lora_B.weight"].to(self.dtype).T
                except KeyError:
                    raise ProtocolError(f"adapter has no LoRA weights for {part.path}") from None
                obf[f"{g.layer}/{k}/A"] = (
                    b.mask_in.right_inv_t(a.T).T if b.mask_in is not None else a
                ).contiguous()
                obf[f"{g.layer}/{k}/B"] = (
                    b.masks_out[k].right(bb) if b.masks_out[k] is not None else bb
                ).contiguous()
        self.cloud.call("set_adapters", tensors=obf)
        return {"imported": len(obf)}

    # ----------------------------------------------------------------- checkpoints
    @remote
    def state(self) -> dict:
        """A checkpoint sealed with the enclave's sealing key (AES-GCM), as a TEE would seal it.

        It holds the session secret, mask epoch, step, RNG state, training settings and the cloud's
        state (adapters + optimizer state in obfuscated coordinates), so only an enclave with the same
        sealing key can restore it, and nobody outside learns masks or obfuscated adapters from it.
        """
        inner = {
            "secret": self._secret,
            "epoch": self.epoch,
            "step": self._step,
            "rng": torch.get_rng_state().numpy().tobytes(),
            "train_cfg": self._train_cfg,
            "settings": self.settings.public(),
            "cloud": self.cloud.call("state") if self.split is not None else None,
        }
        nonce = os.urandom(12)
        # the channel's own codec, not pickle: even a state that unseals is parsed, never executed
        plain = codec.encode(inner)
        blob = nonce + AESGCM(self._sealing_key).encrypt(nonce, plain, b"p3eft-enclave-state")
        return {"sealed": blob, "step": self._step}

    @remote
    def load_state(self, state: dict) -> dict:
        """Restore a sealed checkpoint. Call it before ``provision(done=True)``: it sets the session
        secret so the masks match the checkpoint. After provisioning, only the same session is accepted."""
        blob = state["sealed"]
        try:
            plain = AESGCM(self._sealing_key).decrypt(blob[:12], blob[12:], b"p3eft-enclave-state")
        except Exception:
            raise SecurityError("enclave state does not unseal with this enclave's sealing key") from None
        inner = codec.decode(plain, codec.CodecLimits(max_bytes=2**31))
        if self.split is not None and (inner["secret"] != self._secret or inner["epoch"] != self.epoch):
            raise ProtocolError(
                "load_state after provisioning needs the same session; restore before provisioning"
            )
        self._secret, self.epoch, self._step = inner["secret"], inner["epoch"], inner["step"]
        torch.set_rng_state(torch.frombuffer(bytearray(inner["rng"]), dtype=torch.uint8))
        self.configure_training(
            **{("optimizer" if k == "name" else k): v for k, v in inner["train_cfg"].items()}
        )
        if inner.get("cloud") is not None:
            if self.split is None:
                self._cloud_state_pending = inner["cloud"]
            else:
                self.cloud.call("load_state", state=inner["cloud"])
        return {"step": self._step, "epoch": self.epoch}

    @remote
    def info(self) -> dict:
        out: dict[str, Any] = {
            "settings": self.settings.public(),
            "epoch": self.epoch,
            "step": self._step,
            "provisioned": self.split is not None,
        }
        out.update({k: v for k, v in self._meta.items() if isinstance(v, str | bool | int | float)})
        if self.split is not None:
            acc = self.split.accounting()
            out.update({k: v for k, v in acc.items() if k != "enclave_breakdown"})
            out["family"] = self.split.family
            out["mask_macs_per_token"] = self.mask_macs_per_token()
        return out

    def mask_macs_per_token(self) -> int:
        return sum(
            (b.mask_in.macs_per_row() if b.mask_in else 0)
            + sum(m.macs_per_row() for m in b.masks_out if m is not None)
            for b in self._boundaries.values()
        )

    def mask_tensors(self) -> list[torch.Tensor]:
        """Every mask tensor (tests check none reaches the cloud)."""
        out = []
        for b in self._boundaries.values():
            for m in [b.mask_in, *b.masks_out]:
                if m is not None:
                    out.extend(m.tensors())
        return out


def obfuscate_weight(w: torch.Tensor, mask_in: Mask | None, mask_out: Mask | None) -> torch.Tensor:
    """``W* = R_in^-1 W R_out`` (one side only when the other mask is None); W is (d_in, d_out)."""
    if mask_in is not None:
        w = mask_in.right_inv_t(w.T).T  # (W^T R_in^-T)^T = R_in^-1 W
    if mask_out is not None:
        w = mask_out.right(w)
    return w.contiguous()


def settings_json(settings: EnclaveSettings) -> str:
    return json.dumps(settings.public(), sort_keys=True)
