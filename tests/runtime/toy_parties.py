"""Small role objects with the shape of ObfuscaTune's parties, for runtime tests that need no model.

``ToyCloud`` holds an obfuscated weight and a LoRA-like adapter and draws random numbers (a
gradient dropout) from its own generator; ``ToyEnclave`` holds the orthogonal mask and its own
generator (input noise). Both have ``state``/``load_state``, so an exact resume is observable: the
final adapter after a kill and restart equals the uninterrupted run's only if every RNG, every
weight and every optimizer step was restored and replayed exactly.
"""

from __future__ import annotations

import hashlib
import time

import torch

from p3eft.channel import remote
from p3eft.runtime.enclave_host import HostPolicy
from p3eft.runtime.schema import expect_tensor

D_IN, D_OUT, RANK = 8, 4, 2


class ToyCloud:
    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)
        self.w = self.a = self.b = self.x = None
        self.step = 0

    @remote
    def configure(self, seed: int) -> dict:
        self.gen.manual_seed(seed)
        return {}

    @remote
    def load_weight(self, weight: torch.Tensor) -> dict:
        self.w = expect_tensor(weight, "weight", torch.float64, (D_IN, D_OUT))
        return {}

    @remote
    def init_adapters(self) -> dict:
        self.a = torch.randn(D_IN, RANK, generator=self.gen, dtype=torch.float64) * 0.1
        self.b = torch.zeros(RANK, D_OUT, dtype=torch.float64)
        self.step = 0
        return {}

    @remote
    def forward(self, x: torch.Tensor, delay: float = 0.0) -> torch.Tensor:
        time.sleep(delay)
        self.x = expect_tensor(x, "x", torch.float64, (None, D_IN))
        return x @ self.w + (x @ self.a) @ self.b

    @remote
    def backward(self, gy: torch.Tensor, lr: float) -> dict:
        keep = (torch.rand(self.a.shape, generator=self.gen) > 0.2).double()
        ga = self.x.T @ (gy @ self.b.T) * keep
        gb = (self.x @ self.a).T @ gy
        self.a = self.a - lr * ga
        self.b = self.b - lr * gb
        self.step += 1
        return {"step": self.step}

    @remote
    def adapters(self) -> dict:
        return {"a": self.a, "b": self.b}

    @remote
    def state(self) -> dict:
        return {"a": self.a, "b": self.b, "step": self.step, "rng": self.gen.get_state()}

    @remote
    def load_state(self, state: dict) -> dict:
        self.a, self.b, self.step = state["a"], state["b"], state["step"]
        self.gen.set_state(state["rng"])
        return {}


class ToyEnclave:
    def __init__(self, cloud, seed: bytes) -> None:
        self.cloud = cloud
        self.seed = int.from_bytes(hashlib.sha256(seed).digest()[:7], "little")
        self.gen = torch.Generator().manual_seed(self.seed + 1)
        self.parts: dict[str, torch.Tensor] = {}
        self.r = None
        self.lr = 0.1
        self.step = 0

    @remote
    def provision(self, config: dict | None = None, tensors: dict | None = None, done: bool = False) -> dict:
        self.parts.update(tensors or {})
        if not done:
            return {"received": len(self.parts)}
        w = torch.cat([self.parts[f"w{i}"] for i in range(len(self.parts))])
        q, _ = torch.linalg.qr(
            torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        )
        self.r = q
        self.cloud.call("configure", seed=self.seed % 1000)
        self.cloud.call("load_weight", weight=q.T @ w)
        self.cloud.call("init_adapters")
        return {"provisioned": True}

    @remote
    def configure_training(self, lr: float) -> dict:
        self.lr = lr
        return {}

    @remote
    def train_step(self, x: torch.Tensor, y: torch.Tensor, delay: float = 0.0) -> dict:
        expect_tensor(x, "x", torch.float64, (None, D_IN))
        expect_tensor(y, "y", torch.float64, (x.shape[0], D_OUT))
        x = x + 0.01 * torch.randn(x.shape, generator=self.gen, dtype=torch.float64)
        out = self.cloud.call("forward", x=x @ self.r, delay=delay)
        loss = ((out - y) ** 2).mean()
        self.cloud.call("backward", gy=2 * (out - y) / out.numel(), lr=self.lr)
        self.step += 1
        return {"loss": float(loss), "step": self.step}

    @remote
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cloud.call("forward", x=expect_tensor(x, "x", torch.float64, (None, D_IN)) @ self.r)

    @remote
    def export_adapter(self) -> dict:
        ad = self.cloud.call("adapters")
        return {"a": self.r @ ad["a"], "b": ad["b"]}

    @remote
    def info(self) -> dict:
        return {"step": self.step}

    @remote
    def state(self) -> dict:
        return {"step": self.step, "rng": self.gen.get_state(), "lr": self.lr}

    @remote
    def load_state(self, state: dict) -> dict:
        self.step, self.lr = state["step"], state["lr"]
        self.gen.set_state(state["rng"])
        return {}


def make_cloud() -> ToyCloud:
    return ToyCloud()


def make_enclave(cloud, seed: bytes, sealing_key: bytes = b"") -> ToyEnclave:
    return ToyEnclave(cloud, seed)


# The toy's state() leaves the cloud out and is restored after provisioning; state stays in the host.
make_enclave.host_policy = HostPolicy(
    restore_before_provision=False,
    cloud_state_in_role_state=False,
    host_only=frozenset({"state", "load_state"}),
    replay_methods=frozenset({"train_step", "configure_training"}),
)


def model_chunks(seed: int = 7) -> list[dict]:
    """The model owner's 'model', streamed in two provisioning calls."""
    w = torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [
        {"config": {"d_in": D_IN}, "tensors": {"w0": w[:5]}, "done": False},
        {"tensors": {"w1": w[5:]}, "done": True},
    ]


def batch(step: int) -> dict:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(6, D_IN, generator=g, dtype=torch.float64)
    return {"x": x, "y": torch.randn(6, D_OUT, generator=g, dtype=torch.float64)}
