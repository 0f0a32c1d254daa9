"""The in-process channel: only @remote methods are callable and nothing is shared by reference."""

import pytest
import torch

from p3eft.channel import InProcessChannel, remote, remote_methods
from p3eft.errors import ProtocolError


class Holder:
    def __init__(self):
        self.kept = None

    @remote
    def keep(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = x
        return x * 2

    def secret(self) -> str:
        return "not callable remotely"


def test_only_remote_methods_are_callable():
    ch = InProcessChannel(Holder())
    assert set(remote_methods(Holder())) == {"keep"}
    with pytest.raises(ProtocolError, match="no remote method 'secret'"):
        ch.call("secret")


def test_tensors_are_copied_both_ways():
    h = Holder()
    ch = InProcessChannel(h)
    x = torch.ones(3, requires_grad=True)
    y = ch.call("keep", x=x)
    assert torch.equal(y, torch.full((3,), 2.0))
    assert h.kept is not x and not h.kept.requires_grad and y.grad_fn is None
    h.kept.add_(1)
    assert torch.equal(x, torch.ones(3))


def test_unserialisable_payload_is_refused():
    with pytest.raises(ProtocolError, match="cannot cross"):
        InProcessChannel(Holder()).call("keep", x=object())
