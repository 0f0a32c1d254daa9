"""Keys apart from the context, byte round trips, foreign and malformed ciphertexts."""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.errors import ProtocolError, SecurityError
from p3eft.fhe import ops, serial, tensor
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
    for text in (repr(sk), str(sk), f"{sk}"):
        assert not _shows_key_material(text, sk), text


def _shows_key_material(text: str, sk: SecretKey) -> bool:
    """True when ``text`` contains any 8 consecutive bytes of the serialised secret key (as hex or
    base64, either case) or any of its first 64 coefficient words in decimal."""
    import base64

    from p3eft.fhe import rawpoly

    raw = serial.unpack(sk.to_bytes(), "secret_key").payload
    low = text.lower()
    for i in range(len(raw) - 7):
        window = raw[i : i + 8]
        if window.hex() in low or base64.b64encode(window).decode()[:8] in text:
            return True
    words = rawpoly.read_words(sk.key.data(), 64)
    return any(str(int(w)) in text or f"{int(w):x}" in low for w in words if w > 10**6)


def test_key_material_detector_catches_a_leaky_repr(small):
    # negative control: the check above flags a repr that prints part of the key, in any of the forms
    import base64

    from p3eft.fhe import rawpoly

    _, sk = small
    raw = serial.unpack(sk.to_bytes(), "secret_key").payload
    mid = len(raw) // 2
    word = int(next(w for w in rawpoly.read_words(sk.key.data(), 64) if w > 10**6))
    for leaky in (
        f"SecretKey(data={raw[mid : mid + 12].hex()})",
        f"SecretKey({base64.b64encode(raw[mid : mid + 12]).decode()})",
        f"SecretKey(s0={word})",
    ):
        assert _shows_key_material(leaky, sk), leaky


def test_public_context_round_trip_keeps_id_and_works(small, rng):
    ctx, sk = small
    remote = CkksContext.from_payload(ctx.to_payload())
    assert remote.context_id == ctx.context_id and remote.galois_steps == ctx.galois_steps
    x = rng.uniform(-1, 1, 50)
    ct = tensor.encrypt(remote, x)  # the evaluator side can encrypt but not decrypt
    data = remote.ciphertext_to_bytes(ct)
    sk2 = SecretKey.from_bytes(ctx.params, sk.to_bytes(), ctx.context_id)
    np.testing.assert_allclose(tensor.decrypt(sk2, ctx, ctx.ciphertext_from_bytes(data)), x, atol=1e-6)


def test_an_evaluator_may_drop_the_key_bytes_it_never_forwards(small, rng):
    ctx, sk = small
    payload = ctx.to_payload()
    lean = CkksContext.from_payload(payload, keep_key_bytes=False)
    assert lean.context_id == ctx.context_id and not lean._key_envelopes
    assert CkksContext.from_payload(payload)._key_envelopes  # the default keeps them
    x = rng.uniform(-1, 1, 50)
    ct = ops.rotate(lean, tensor.encrypt(lean, x), lean.galois_steps[0])  # the keys still work
    assert ctx.level(lean.ciphertext_from_bytes(lean.ciphertext_to_bytes(ct))) == ctx.top_level
    with pytest.raises(ProtocolError, match="keep_key_bytes"):
        lean.to_payload()


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


# --- key integrity (issue 9, finding 5) -------------------------------------------------------------


@pytest.mark.parametrize("which", ["relin_keys", "galois_keys"])
def test_swapped_evaluation_key_is_refused(small, which):
    ctx, _ = small
    other, _ = keygen(get_param_set("N8192"), [1, 2])  # same parameters, same steps, another key pair
    payload = ctx.to_payload()
    env = serial.unpack(other.key_bytes(which), which)
    # re-wrapped under the victim's context id, so only a check of the key itself can catch it
    payload[which] = serial.pack(which, ctx.context_id, env.payload, meta=env.meta)
    with pytest.raises(SecurityError, match="does not belong"):
        CkksContext.from_payload(payload)


def test_context_id_covers_every_key(small):
    ctx, _ = small
    env = {k: serial.unpack(ctx.key_bytes(k), k).payload for k in ("public_key", "relin_keys", "galois_keys")}
    base = CkksContext.compute_id(
        ctx.params, env["public_key"], env["relin_keys"], env["galois_keys"], [1, 2]
    )
    assert base == ctx.context_id
    assert CkksContext.compute_id(ctx.params, env["public_key"], env["relin_keys"], b"", [1, 2]) != base
    assert CkksContext.compute_id(ctx.params, env["public_key"], b"", env["galois_keys"], [1, 2]) != base
    assert (
        CkksContext.compute_id(ctx.params, env["public_key"], env["relin_keys"], env["galois_keys"], [1])
        != base
    )


# --- error types (issue 9, finding 6) -------------------------------------------------------------


@pytest.mark.parametrize("meta", [b"[]", b"3", b'"layout"', b"null"])
def test_metadata_that_is_json_but_not_an_object(n8192, meta):
    ctx, _ = n8192
    env = serial.unpack(ctx.ciphertext_to_bytes(tensor.encrypt(ctx, np.ones(8))), "ciphertext")
    import hashlib

    head = serial._HEAD.pack(
        serial.MAGIC,
        serial.VERSION,
        serial.KINDS["ciphertext"],
        ctx.context_id,
        env.level,
        env.scale,
        len(meta),
        len(env.payload),
        hashlib.sha256(meta + env.payload).digest()[:16],
    )
    with pytest.raises(ProtocolError, match="not an object"):
        ctx.ciphertext_from_bytes(head + meta + env.payload)


@pytest.mark.parametrize(
    "steps", [["x"], [1.5], [True], [0], [-1], [1 << 40], [2, 1], [1, 1], "1,2", {"a": 1}]
)
def test_bad_galois_steps_are_a_protocol_error(small, steps):
    ctx, _ = small
    payload = ctx.to_payload()
    env = serial.unpack(payload["galois_keys"], "galois_keys")
    payload["galois_keys"] = serial.pack("galois_keys", ctx.context_id, env.payload, meta={"steps": steps})
    with pytest.raises(ProtocolError, match="steps"):
        CkksContext.from_payload(payload)


# --- Galois keys: one SEAL object per step ---------------------------------------------------------


def _rewrapped(ctx: CkksContext, galois_raw: bytes, meta: dict) -> dict[str, bytes]:
    """A key payload around other Galois key bytes, every envelope re-wrapped under the id those bytes
    give: only the checks of the keys themselves can refuse it."""
    raw = {k: serial.unpack(ctx.key_bytes(k), k).payload for k in ("public_key", "relin_keys")}
    cid = CkksContext.compute_id(ctx.params, raw["public_key"], raw["relin_keys"], galois_raw, meta["steps"])
    out = {k: serial.pack(k, cid, v) for k, v in raw.items()}
    out["galois_keys"] = serial.pack("galois_keys", cid, galois_raw, meta=meta)
    out["params"] = ctx.params.to_json().encode()
    return out


@pytest.mark.parametrize("sizes", [[1], "12", [0, 5], [True, 1], [1.5, 2], [-1, 10**9], [1, 2]])
def test_bad_galois_key_sizes_are_a_protocol_error(small, sizes):
    ctx, _ = small
    payload = ctx.to_payload()
    env = serial.unpack(payload["galois_keys"], "galois_keys")
    payload["galois_keys"] = serial.pack(
        "galois_keys", ctx.context_id, env.payload, meta=dict(env.meta, sizes=sizes)
    )
    with pytest.raises(ProtocolError, match="sizes"):
        CkksContext.from_payload(payload)


def test_galois_keys_cut_wrong_or_swapped_are_refused(small):
    ctx, _ = small
    env = serial.unpack(ctx.key_bytes("galois_keys"), "galois_keys")
    n1, n2 = env.meta["sizes"]
    assert env.meta["steps"] == [1, 2] and n1 + n2 == len(env.payload)
    shifted = _rewrapped(ctx, env.payload, {"steps": [1, 2], "sizes": [n1 + 8, n2 - 8]})
    with pytest.raises(ProtocolError, match="galois_keys payload rejected|do not cover"):
        CkksContext.from_payload(shifted)
    first, second = env.payload[:n1], env.payload[n1:]
    swapped = _rewrapped(ctx, second + first, {"steps": [1, 2], "sizes": [n2, n1]})
    with pytest.raises(ProtocolError, match="do not cover"):
        CkksContext.from_payload(swapped)
    # negative control: the same re-wrapping of the genuine order loads
    assert CkksContext.from_payload(_rewrapped(ctx, first + second, env.meta)).galois_steps == (1, 2)


def test_one_object_galois_payload_still_loads_and_rotates(small):
    """The form before one object per step (kept keys and checkpoints hold it): one SEAL object for
    every step, no sizes. It loads, rotates, and is forwarded as received."""
    import tenseal.sealapi as sealapi

    ctx, sk = small
    gk = sealapi.GaloisKeys()
    sealapi.KeyGenerator(ctx.seal, sk.key).create_galois_keys(
        ctx.seal.key_context_data().galois_tool().get_elts_from_steps([1, 2]), gk
    )
    payload = _rewrapped(ctx, serial.seal_to_bytes(gk), {"steps": [1, 2]})
    old = CkksContext.from_payload(payload)
    assert len({id(o) for o in old.galois_keys.values()}) == 1 and old.galois_steps == (1, 2)
    assert old.to_payload() == payload
    own = SecretKey(
        sk.params, sk.seal_context, sk.key, old.context_id
    )  # the same secret key, under the new id
    x = np.arange(old.slots) / old.slots
    for step in (1, 2):
        y = own.decrypt_slots(old, ops.rotate(old, tensor.encrypt(old, x), step))
        np.testing.assert_allclose(y, np.roll(x, -step), atol=1e-5)


def test_a_key_holder_need_not_keep_its_galois_keys():
    ps = get_param_set("N8192")
    ctx, sk = keygen(ps, [1, 4, ps.slots - 1], keep_galois_keys=False)  # 3 = 4 - 1, composed
    assert ctx.galois_keys == {} and not ctx.can_rotate(1) and ctx.galois_steps == (1, 4, ps.slots - 1)
    other = CkksContext.from_payload(ctx.to_payload())
    assert other.context_id == ctx.context_id and other.can_rotate(3) and not other.can_rotate(2)
    x = np.arange(ps.slots) / ps.slots
    ct = other.ciphertext_from_bytes(ctx.ciphertext_to_bytes(tensor.encrypt(ctx, x)))
    np.testing.assert_allclose(sk.decrypt_slots(other, ops.rotate(other, ct, 3)), np.roll(x, -3), atol=1e-5)


def test_relabelled_ciphertext_of_another_parameter_set(n8192):
    from p3eft.fhe import ops
    from p3eft.fhe.params import ParamSet

    ctx, _ = n8192
    other, _ = keygen(ParamSet("alt", 8192, (50, 40, 40, 60)))
    ct = tensor.encrypt(other, np.ones(8))
    ct.context_id = ctx.context_id  # relabelled: the id matches, the parameters do not
    for op in (lambda: ops.add(ctx, ct, ct), lambda: ctx.level(ct), lambda: ctx.ciphertext_to_bytes(ct)):
        with pytest.raises(SecurityError, match="another parameter set"):
            op()
    env = serial.unpack(other.ciphertext_to_bytes(tensor.encrypt(other, np.ones(8))), "ciphertext")
    forged = serial.pack("ciphertext", ctx.context_id, env.payload, env.level, env.scale, env.meta)
    with pytest.raises(ProtocolError):
        ctx.ciphertext_from_bytes(forged)


def test_key_payload_that_is_not_a_dict(small):
    with pytest.raises(ProtocolError, match="dict"):
        CkksContext.from_payload([b"x"])  # type: ignore[arg-type]


# --- secrets never on disk (issue 9, finding 7) ---------------------------------------------------

_LOOPER = """
import sys
from p3eft.fhe import serial
from p3eft.fhe.context import keygen
from p3eft.fhe.params import get_param_set
from p3eft.fhe import tensor
import numpy as np
ctx, sk = keygen(get_param_set("N8192"))
ct = tensor.encrypt(ctx, np.ones(8))
print("ready", flush=True)
while True:
    sk.to_bytes()
    ctx.ciphertext_from_bytes(ctx.ciphertext_to_bytes(ct))
"""


def _named_scratch() -> set[str]:
    import glob
    import tempfile

    found = set()
    for base in {"/dev/shm", tempfile.gettempdir()}:
        found.update(glob.glob(f"{base}/p3eft-fhe-*"))
    return found


@pytest.mark.skipif(not serial._MEMFD, reason="needs os.memfd_create (Linux)")
def test_sigkill_mid_serialisation_leaves_nothing_behind():
    import os
    import signal
    import subprocess
    import sys
    import time

    before = _named_scratch()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", _LOOPER], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)  # inside the loop: serialising the secret key or a ciphertext
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    assert _named_scratch() - before == set()


def test_secret_key_serialises_without_a_named_file(small, monkeypatch):
    # every scratch file SEAL sees is an anonymous memfd (/proc/self/fd/N), never a path in a directory
    _, sk = small
    seen: list[str] = []
    real = serial._scratch

    def spy(secret):
        cm = real(secret)

        class Wrap:
            def __enter__(self):
                path, fd = cm.__enter__()
                seen.append(path)
                return path, fd

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Wrap()

    monkeypatch.setattr(serial, "_scratch", spy)
    data = sk.to_bytes()
    SecretKey.from_bytes(sk.params, data, sk.context_id)
    assert len(seen) == 2 and all(p.startswith("/proc/self/fd/") for p in seen)
    monkeypatch.setattr(serial, "_MEMFD", False)
    monkeypatch.setattr(serial, "_scratch", real)
    with pytest.raises(SecurityError, match="secret key"):
        sk.to_bytes()
