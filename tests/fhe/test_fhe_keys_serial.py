"""Keys apart from the context, byte round trips, foreign and malformed ciphertexts."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import serial, tensor
from p3eft.fhe.context import CkksContext, Layout, SecretKey, keygen
from p3eft.fhe.params import get_param_set


def test_encrypt_decrypt_rows_round_trip(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-5, 5, (20, 100))
    cts = tensor.encrypt_rows(ctx, x)
    assert len(cts) == 1 and cts[0].layout.block == 128  # 20 rows of 100 share one ciphertext
    np.testing.assert_allclose(tensor.decrypt_rows(sk, ctx, cts), x, atol=1e-6)


@pytest.fixture(scope="module")
def small():
    """A key pair with two rotation keys only: serialising many Galois keys is slow (zstd)."""
    return keygen(get_param_set("N8192"), [1, 2])


def test_secret_key_is_separate_and_each_key_serialises(small):
    ctx, sk = small
    payload = ctx.to_payload()
    assert set(payload) == {"params", "public_key", "relin_keys", "galois_keys"}
    assert not any(isinstance(v, SecretKey) for v in vars(ctx).values())
    sizes = {k: len(v) for k, v in payload.items()}
    sizes["secret_key"] = len(sk.to_bytes())
    assert all(s > 1000 for k, s in sizes.items() if k != "params")
    assert "key" not in repr(sk).lower().replace("secretkey", "")  # repr shows no material


def test_public_context_round_trip_keeps_id_and_works(small, rng):
    ctx, sk = small
    remote = CkksContext.from_payload(ctx.to_payload())
    assert remote.context_id == ctx.context_id and remote.galois_steps == ctx.galois_steps
    x = rng.uniform(-1, 1, 50)
    ct = tensor.encrypt(remote, x)  # the evaluator side can encrypt but not decrypt
    data = remote.ciphertext_to_bytes(ct)
    sk2 = SecretKey.from_bytes(ctx.params, sk.to_bytes(), ctx.context_id)
    np.testing.assert_allclose(tensor.decrypt(sk2, ctx, ctx.ciphertext_from_bytes(data)), x, atol=1e-6)


def test_ciphertext_bytes_round_trip_keeps_level_scale_layout(n8192, rng):
    ctx, sk = n8192
    from p3eft.fhe import ops

    ct = ops.mul_plain(ctx, tensor.encrypt(ctx, rng.uniform(-1, 1, (4, 30)), Layout(30, 4, 32, "rows")), 2.0)
    back = ctx.ciphertext_from_bytes(ctx.ciphertext_to_bytes(ct))
    assert ctx.level(back) == ctx.level(ct) == ctx.top_level - 1
    assert back.layout == ct.layout and back.seal.scale == ct.seal.scale
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, back), tensor.decrypt(sk, ctx, ct), atol=1e-9)


def test_foreign_ciphertext_is_refused(n8192, rng):
    ctx, _ = n8192
    other, _ = keygen(get_param_set("N8192"))
    foreign = tensor.encrypt(other, rng.uniform(-1, 1, 8))
    with pytest.raises(SecurityError, match="context"):
        ctx.ciphertext_from_bytes(other.ciphertext_to_bytes(foreign))
    from p3eft.fhe import ops

    with pytest.raises(SecurityError):
        ops.add(ctx, tensor.encrypt(ctx, np.ones(8)), foreign)


@pytest.mark.parametrize("cut", [0, 5, serial.HEADER_BYTES - 1, serial.HEADER_BYTES + 10, -1])
def test_truncated_bytes_give_clear_errors(n8192, cut):
    ctx, _ = n8192
    data = ctx.ciphertext_to_bytes(tensor.encrypt(ctx, np.ones(8)))
    with pytest.raises(ProtocolError, match="truncated"):
        ctx.ciphertext_from_bytes(data[:cut])


def test_corrupted_and_wrong_kind_bytes_give_clear_errors(n8192):
    ctx, sk = n8192
    data = bytearray(ctx.ciphertext_to_bytes(tensor.encrypt(ctx, np.ones(8))))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(ProtocolError, match="checksum"):
        ctx.ciphertext_from_bytes(bytes(flipped))
    with pytest.raises(ProtocolError, match="magic"):
        ctx.ciphertext_from_bytes(b"XXXXX" + bytes(data[5:]))
    with pytest.raises(ProtocolError, match="expected a ciphertext"):
        ctx.ciphertext_from_bytes(sk.to_bytes())
    with pytest.raises(ProtocolError):
        ctx.ciphertext_from_bytes("not bytes")  # type: ignore[arg-type]


def test_valid_envelope_around_bad_seal_bytes_is_refused_by_seal_check(n8192):
    # a peer can compute our checksum; SEAL's own validation must still stop a bad payload cleanly
    ctx, _ = n8192
    env = serial.unpack(ctx.ciphertext_to_bytes(tensor.encrypt(ctx, np.ones(8))), "ciphertext")
    for payload in (env.payload[: len(env.payload) // 2], b"\x00" * 64, env.payload[:16] + b"\xff" * 200):
        forged = serial.pack("ciphertext", ctx.context_id, payload, env.level, env.scale, env.meta)
        with pytest.raises(ProtocolError):
            ctx.ciphertext_from_bytes(forged)


def test_seeded_upload_is_half_size_and_decrypts(n8192, rng):
    ctx, sk = n8192
    x = rng.uniform(-1, 1, (8, 100))
    lay = Layout(100, 8, 128, "rows")
    seeded = tensor.encrypt_seeded_bytes(sk, ctx, x, lay)
    full = ctx.ciphertext_to_bytes(tensor.encrypt(ctx, x, lay))
    assert len(seeded) < 0.6 * len(full)
    back = ctx.ciphertext_from_bytes(seeded)
    assert ctx.level(back) == ctx.top_level and back.layout == lay
    np.testing.assert_allclose(tensor.decrypt(sk, ctx, back), x, atol=1e-6)


@pytest.mark.parametrize(
    "layout",
    [
        {"length": 10, "rows": 1000, "block": 16, "form": "rows"},
        {"length": 32, "rows": 1, "block": 16, "form": "rows"},
        {"length": 8, "rows": 1, "block": 8, "form": "bogus"},
        {"rows": 1},
    ],
)
def test_malformed_layout_metadata_is_refused(n8192, layout):
    ctx, _ = n8192
    env = serial.unpack(ctx.ciphertext_to_bytes(tensor.encrypt(ctx, np.ones(8))), "ciphertext")
    forged = serial.pack("ciphertext", ctx.context_id, env.payload, env.level, env.scale, {"layout": layout})
    with pytest.raises(ProtocolError, match="layout"):
        ctx.ciphertext_from_bytes(forged)
