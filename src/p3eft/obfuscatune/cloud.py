"""The untrusted accelerator's role: obfuscated linears plus LoRA adapters, nothing else.

It receives only masked weights ``W* = R_in^-1 W R_out`` (or one-sided, in paper mode) and masked
activations; it never sees a mask or a plaintext weight. LoRA adapters live here in obfuscated
coordinates (``y* = x* W* + s * drop(x*) A* B*``) with their optimizer state; the cloud keeps its own
autograd graph per ``(layer, tag)`` between ``forward`` and ``backward``.

Dropout on the LoRA branch acts on the masked input (ours): with orthogonal masks it is still
zero-mean multiplicative noise, but not the same draw as plaintext dropout, so exact equality with a
plain run needs ``dropout=0``.
"""

from __future__ import annotations

from typing import Any

import torch

from p3eft.channel import remote
from p3eft.errors import ProtocolError
from p3eft.tuning.lora import LoraSettings

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Part:
    def __init__(self, rows_total: int, d_out: int, dtype: torch.dtype, device: str) -> None:
        self.weight = torch.empty(rows_total, d_out, dtype=dtype, device=device)
        self.filled = torch.zeros(rows_total, dtype=torch.bool)
        self.a: torch.nn.Parameter | None = None
        self.b: torch.nn.Parameter | None = None


class UntrustedCloud:
    """Untrusted accelerator holding obfuscated weights and LoRA adapters (see the party contract)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device or default_device()
        self.dtype = torch.float32
        self.lora = LoraSettings()
        self.layers: dict[str, list[_Part]] = {}
        self._graphs: dict[tuple[str, str], tuple] = {}  # (x, x_lora or None, outputs)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(0)
        self._opt_cfg: dict[str, Any] = {
            "name": "adamw",
            "lr": 3e-5,
            "weight_decay": 0.0,
            "momentum": 0.0,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "max_grad_norm": 0.0,
        }
        self._opt: torch.optim.Optimizer | None = None
        self._step = 0

    # ----------------------------------------------------------------- setup
    @remote
    def configure(self, lora: dict, dtype: str = "float32", seed: int = 0) -> dict:
        if dtype not in _DTYPES:
            raise ProtocolError(f"unknown dtype {dtype!r}")
        self.lora = LoraSettings.from_wire(lora)
        self.dtype = _DTYPES[dtype]
        self._gen.manual_seed(int(seed))
        self.layers.clear()
        self._graphs.clear()
        self._opt, self._step = None, 0
        return {"device": self.device}

    @remote
    def load_weight(
        self, layer: str, part: int, weight: torch.Tensor, row_start: int = 0, rows_total: int | None = None
    ) -> dict:
        """Store rows ``row_start:row_start+len(weight)`` of an obfuscated (d_in, d_out) weight."""
        if weight.dim() != 2:
            raise ProtocolError("load_weight expects a 2-D slice")
        rows_total = int(rows_total if rows_total is not None else weight.shape[0])
        parts = self.layers.setdefault(layer, [])
        if part > len(parts):
            raise ProtocolError(f"{layer}: part {part} before part {len(parts)}")
        if part == len(parts):
            parts.append(_Part(rows_total, weight.shape[1], self.dtype, self.device))
        p = parts[part]
        end = row_start + weight.shape[0]
        if p.weight.shape != (rows_total, weight.shape[1]) or row_start < 0 or end > rows_total:
            raise ProtocolError(
                f"{layer}/{part}: slice {row_start}:{end} does not fit {tuple(p.weight.shape)}"
            )
        p.weight[row_start:end] = weight.to(device=self.device, dtype=self.dtype)
        p.filled[row_start:end] = True
        return {"layer": layer, "part": part, "rows_loaded": int(p.filled.sum())}

    @remote
    def init_adapters(self) -> dict:
        """Create LoRA ``A*`` (uniform +-1/sqrt(d_in), as PEFT's Kaiming init) and ``B* = 0`` for every part."""
        n = 0
        for layer, parts in self.layers.items():
            for k, p in enumerate(parts):
                if not bool(p.filled.all()):
                    raise ProtocolError(f"{layer}/{k}: weight incomplete")
                d_in, d_out = p.weight.shape
                a, b = self.lora.init_pair(
                    d_in, d_out, generator=self._gen, dtype=self.dtype, device=self.device
                )
                p.a, p.b = torch.nn.Parameter(a), torch.nn.Parameter(b)
                n += p.a.numel() + p.b.numel()
        self._opt = None
        return {"lora_parameters": n}

    @remote
    def configure_optimizer(
        self,
        name: str = "adamw",
        lr: float = 3e-5,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        betas: list | None = None,
        eps: float = 1e-8,
        max_grad_norm: float = 0.0,
    ) -> dict:
        if name not in ("adamw", "sgd"):
            raise ProtocolError(f"unknown optimizer {name!r}")
        self._opt_cfg = {
            "name": name,
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "momentum": float(momentum),
            "betas": list(betas or [0.9, 0.999]),
            "eps": float(eps),
            "max_grad_norm": float(max_grad_norm),
        }
        self._opt = None
        return {}

    # ----------------------------------------------------------------- compute
    def _parts(self, layer: str) -> list[_Part]:
        parts = self.layers.get(layer)
        if not parts:
            raise ProtocolError(f"no layer {layer!r} on the untrusted side")
        return parts

    def _compute(
        self, parts: list[_Part], x: torch.Tensor, train: bool, x_lora: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        # with row mixing the enclave sends the LoRA input (dropout applied there) as x_lora
        xd = x_lora if x_lora is not None else self.lora.drop(x, train=train, generator=self._gen)
        outs = []
        for p in parts:
            y = x @ p.weight
            if p.a is not None:
                y = y + self.lora.update(xd, p.a, p.b)
            outs.append(y)
        return outs

    @remote
    def forward(
        self, layer: str, x: torch.Tensor, tag: str | None = None, x_lora: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """``x`` feeds the weights and the LoRA branch; ``x_lora`` (optional, same shape) replaces the
        LoRA branch's input when the enclave has applied the LoRA dropout itself (row mixing)."""
        parts = self._parts(layer)
        x = x.to(device=self.device, dtype=self.dtype)
        if x_lora is not None:
            if x_lora.shape != x.shape:
                raise ProtocolError(
                    f"{layer}: x_lora {tuple(x_lora.shape)} does not match x {tuple(x.shape)}"
                )
            x_lora = x_lora.to(device=self.device, dtype=self.dtype)
        if tag is None:
            with torch.no_grad():
                return [y.cpu() for y in self._compute(parts, x, train=False, x_lora=x_lora)]
        x.requires_grad_(True)
        if x_lora is not None:
            x_lora.requires_grad_(True)
        with torch.enable_grad():
            outs = self._compute(parts, x, train=True, x_lora=x_lora)
        self._graphs[(layer, tag)] = (x, x_lora, outs)
        return [y.detach().cpu() for y in outs]

    @remote
    def backward(self, layer: str, grads: list[torch.Tensor], tag: str) -> torch.Tensor | list[torch.Tensor]:
        """Gradient w.r.t. ``x`` (a list ``[dx, dx_lora]`` when the forward had ``x_lora``)."""
        saved = self._graphs.pop((layer, tag), None)
        if saved is None:
            raise ProtocolError(f"no forward pass {tag!r} kept for {layer!r}")
        x, x_lora, outs = saved
        if len(grads) != len(outs):
            raise ProtocolError(f"{layer}: {len(grads)} gradients for {len(outs)} outputs")
        gs = [g.to(device=self.device, dtype=self.dtype) for g in grads]
        torch.autograd.backward(outs, gs)
        if x_lora is None:
            return x.grad.detach().cpu()
        gl = x_lora.grad if x_lora.grad is not None else torch.zeros_like(x_lora)
        return [x.grad.detach().cpu(), gl.detach().cpu()]

    @remote
    def release(self, tag: str | None = None) -> dict:
        keys = [k for k in self._graphs if tag is None or k[1] == tag or k[1].startswith(f"{tag}.")]
        for k in keys:
            del self._graphs[k]
        return {"released": len(keys)}

    # ----------------------------------------------------------------- optimisation
    def _params(self) -> list[torch.nn.Parameter]:
        return [t for parts in self.layers.values() for p in parts for t in (p.a, p.b) if t is not None]

    def _optimizer(self) -> torch.optim.Optimizer:
        if self._opt is None:
            c = self._opt_cfg
            params = self._params()
            if not params:
                raise ProtocolError("no adapters: call init_adapters first")
            if c["name"] == "sgd":
                self._opt = torch.optim.SGD(
                    params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"]
                )
            else:
                self._opt = torch.optim.AdamW(
                    params, lr=c["lr"], betas=tuple(c["betas"]), eps=c["eps"], weight_decay=c["weight_decay"]
                )
        return self._opt

    @remote
    def zero_grad(self) -> dict:
        for p in self._params():
            p.grad = None
        return {}

    @remote
    def step(self) -> dict:
        """One optimizer step. Gradient-norm clipping commutes with orthogonal masks, so it is done here."""
        opt = self._optimizer()
        if self._opt_cfg["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(self._params(), self._opt_cfg["max_grad_norm"])
        opt.step()
        self._step += 1
        return {"step": self._step}

    # ----------------------------------------------------------------- state
    @remote
    def adapters(self) -> dict:
        out = {}
        for layer, parts in self.layers.items():
            for k, p in enumerate(parts):
                if p.a is not None:
                    out[f"{layer}/{k}/A"] = p.a.detach().cpu()
                    out[f"{layer}/{k}/B"] = p.b.detach().cpu()
        return out

    @remote
    def set_adapters(self, tensors: dict) -> dict:
        for key, t in tensors.items():
            layer, k, which = key.rsplit("/", 2)
            p = self._parts(layer)[int(k)]
            target = p.a if which == "A" else p.b
            if target is None or target.shape != t.shape:
                raise ProtocolError(f"adapter {key}: shape {tuple(t.shape)} does not fit")
            with torch.no_grad():
                target.copy_(t.to(device=self.device, dtype=self.dtype))
        return {}

    @remote
    def state(self) -> dict:
        opt_state: dict[str, Any] = {}
        if self._opt is not None:
            sd = self._opt.state_dict()
            opt_state = {
                "state": {
                    str(i): {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
                    for i, s in sd["state"].items()
                },
                "param_groups": sd["param_groups"],
            }
        return {
            "adapters": self.adapters(),
            "optimizer": opt_state,
            "optimizer_config": dict(self._opt_cfg),
            "step": self._step,
            "rng": self._gen.get_state().cpu(),
        }

    @remote
    def load_state(self, state: dict) -> dict:
        self.set_adapters(state["adapters"])
        self.configure_optimizer(**state["optimizer_config"])
        opt_state = state.get("optimizer") or {}
        if opt_state:
            groups = [
                dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in opt_state["param_groups"]
            ]
            sd = {"state": {int(i): s for i, s in opt_state["state"].items()}, "param_groups": groups}
            self._optimizer().load_state_dict(sd)
        self._step = int(state["step"])
        self._gen.set_state(state["rng"].to(self._gen.get_state().device))
        return {"step": self._step}

    @remote
    def info(self) -> dict:
        return {
            "device": self.device,
            "layers": len(self.layers),
            "weight_parameters": sum(p.weight.numel() for ps in self.layers.values() for p in ps),
            "lora_parameters": sum(t.numel() for t in self._params()),
            "pending_graphs": len(self._graphs),
        }
