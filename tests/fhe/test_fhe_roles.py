"""The key holder behind a Channel: public keys out, refresh round trip, no secret-key method."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.channel import InProcessChannel, remote_methods
from p3eft.errors import ProtocolError
from p3eft.fhe import nonlinear, ops, tensor
from p3eft.fhe.context import CkksContext
from p3eft.fhe.params import get_param_set
from p3eft.fhe.roles import KeyHolder, RemoteRefresher


def test_refresh_through_a_channel_drives_a_deep_function(rng):
    holder = KeyHolder(get_param_set("N16384"))
    chan = InProcessChannel(holder)
    ctx = CkksContext.from_payload(chan.call("fhe_public_keys"))  # the evaluator's view: public only
    assert set(remote_methods(holder)) == {"fhe_public_keys", "fhe_refresh"}
    with pytest.raises(ProtocolError):
        chan.call("secret_key")
    approx = nonlinear.reciprocal()  # depth 6 > N16384's 4 levels: needs refreshes
    x = rng.uniform(approx.lo, approx.hi, 32)
    refresher = RemoteRefresher(ctx, chan, bound=8.0)
    y = approx.encrypted(ctx, tensor.encrypt(ctx, x), refresher)
    assert refresher.calls >= 1
    np.testing.assert_allclose(tensor.decrypt(holder.secret_key, ctx, y), approx.plain(x), atol=1e-4)
    low = ops.mul_plain(ctx, tensor.encrypt(ctx, x), 1.0)
    assert ctx.level(refresher(low)) == ctx.top_level
