"""Record the enclave <-> cloud boundary: everything the untrusted side receives and returns.

The wrapper sits where the cloud's own process would see traffic (the enclave's channel to it), so
an attack that uses only a :class:`Transcript` uses only what the untrusted side holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from p3eft.channel import Channel, copy_payload


@dataclass
class Crossing:
    """One forward or backward call: what was sent to the cloud and what it answered."""

    method: str  # forward | backward
    layer: str
    tag: str | None
    sent: list[torch.Tensor]  # forward: [x] (+ [x_lora]); backward: the gradients per part
    answered: list[torch.Tensor]


@dataclass
class Transcript:
    """The untrusted side's view of a session (only the layers the recorder was asked to keep)."""

    weights: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # (layer, part) -> W*
    crossings: list[Crossing] = field(default_factory=list)

    def forwards(self, layer: str, *, training: bool | None = None) -> list[Crossing]:
        """Forward crossings of ``layer`` (``training``: only calls that kept a graph / only those that did not)."""
        return [
            c
            for c in self.crossings
            if c.method == "forward"
            and c.layer == layer
            and (training is None or (c.tag is not None) == training)
        ]

    def backwards(self, layer: str) -> list[Crossing]:
        return [c for c in self.crossings if c.method == "backward" and c.layer == layer]


class RecordingChannel:
    """A :class:`~p3eft.channel.Channel` to the cloud that keeps a copy of the traffic of ``layers``
    (None: all layers). Weights are assembled from their ``load_weight`` row slices."""

    def __init__(self, inner: Channel, layers: set[str] | None = None) -> None:
        self.inner = inner
        self.layers = layers
        self.transcript = Transcript()
        self._tags: dict[tuple[str, str], list[torch.Tensor]] = {}

    def _keep(self, layer: str) -> bool:
        return self.layers is None or layer in self.layers

    def call(self, method: str, /, **kwargs: Any) -> Any:
        out = self.inner.call(method, **kwargs)
        layer = kwargs.get("layer")
        if layer is None or not self._keep(layer):
            return out
        t = self.transcript
        if method == "load_weight":
            key = (layer, int(kwargs["part"]))
            w = kwargs["weight"]
            total = int(kwargs.get("rows_total") or w.shape[0])
            if key not in t.weights:
                t.weights[key] = torch.zeros(total, w.shape[1], dtype=w.dtype)
            r0 = int(kwargs.get("row_start", 0))
            t.weights[key][r0 : r0 + w.shape[0]] = w
        elif method == "forward":
            sent = [kwargs["x"]] + ([kwargs["x_lora"]] if kwargs.get("x_lora") is not None else [])
            t.crossings.append(
                Crossing("forward", layer, kwargs.get("tag"), copy_payload(sent), copy_payload(out))
            )
        elif method == "backward":
            answered = out if isinstance(out, list) else [out]
            t.crossings.append(
                Crossing(
                    "backward",
                    layer,
                    kwargs.get("tag"),
                    copy_payload(list(kwargs["grads"])),
                    copy_payload(answered),
                )
            )
        return out

    def close(self) -> None:
        self.inner.close()
