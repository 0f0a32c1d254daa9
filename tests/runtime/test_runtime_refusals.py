"""Bad input on a live mutual-TLS server: each is refused with a clear error, and the very next
good request is served. Servers run in this process on 127.0.0.1 with free ports."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from p3eft.cli.main import main
from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime import codec
from p3eft.runtime.attestation import SimulatedAttestor, SimulatedVerifier, code_measurement
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.enclave_host import EnclaveHost
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.frame import Frame, Kind, unpack
from p3eft.runtime.launch import connect_attested, enclave_sealing_key
from p3eft.runtime.pki import init_keys, load_identity, read_key_file
from p3eft.runtime.sealing import Sealer, sealing_key
from p3eft.runtime.server import PartyServer, ServerConfig
from p3eft.runtime.session import new_session_id

_spec = importlib.util.spec_from_file_location(
    "toy_parties_refusals", Path(__file__).parent / "toy_parties.py"
)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    certs = d / "certs"
    init_keys(certs)
    cloud = PartyServer(
        toy.make_cloud(),
        load_identity(certs, "cloud"),
        ServerConfig(max_message_bytes=LIMIT, allowed_peers=frozenset({"enclave"})),
    )
    cport = cloud.start()
    ident = load_identity(certs, "enclave")
    attestor = SimulatedAttestor(read_key_file(certs, "platform-attest.key"))
    key = enclave_sealing_key(certs, attestor.measurement)
    host = EnclaveHost(
        toy.make_enclave,
        lambda: NetworkChannel(f"127.0.0.1:{cport}", ident, "cloud", max_message_bytes=LIMIT),
        d / "state",
        Sealer(key),
        key,
        checkpoint_every=2,
        policy=toy.make_enclave.host_policy,
    )
    enclave = PartyServer(
        host, ident, ServerConfig(max_message_bytes=LIMIT), attestor=attestor, resolver=host.resolve
    )
    eport = enclave.start()
    url = f"127.0.0.1:{eport}"
    with connect_attested(url, certs, "model-owner") as mo:
        for chunk in toy.model_chunks():
            mo.call("provision", **chunk)
    yield {"certs": certs, "url": url, "cloud_url": f"127.0.0.1:{cport}", "host": host, "dir": d}
    enclave.stop()
    cloud.stop()


@pytest.fixture
def ch(net):
    c = connect_attested(net["url"], net["certs"], "data-owner", max_message_bytes=8 * LIMIT)
    yield c
    c.close()


def _good(ch) -> None:
    """The next good request is served."""
    out = ch.call("logits", x=torch.ones(2, toy.D_IN, dtype=torch.float64))
    assert out.shape == (2, toy.D_OUT)


def _raw_request(
    ch, method: str, kwargs: dict, seq: int | None = None, session: bytes | None = None
) -> bytes:
    """A well-formed encrypted request frame on ``ch``'s session (for tampering)."""
    ch._seq += 1
    seq = ch._seq if seq is None else seq
    sid = ch.session_id if session is None else session
    body = ch._cipher.seal(0, sid, seq, Kind.REQUEST, method, codec.encode(kwargs))
    from p3eft.runtime.frame import Flag

    return Frame(Kind.REQUEST, sid, seq, method, body, Flag.ENCRYPTED).pack()


def _error_of(ch, raw: bytes) -> str:
    frame = unpack(ch.send_raw(raw), 8 * LIMIT)
    assert frame.kind == Kind.ERROR
    err = codec.decode(frame.payload)
    return f"{err['type']}: {err['message']}"


def test_network_results_equal_in_process(net, ch):
    from p3eft.channel import InProcessChannel

    x = torch.randn(3, toy.D_IN, dtype=torch.float64)
    net_out = ch.call("logits", x=x)
    assert net_out.dtype == torch.float64 and ch.stats.bytes_sent > 0
    # the same enclave role object through the in-process transport gives the same bits
    assert torch.equal(net_out, InProcessChannel(net["host"].role).call("logits", x=x))


def test_truncated_frame(ch):
    raw = _raw_request(ch, "logits", {"x": torch.ones(2, toy.D_IN, dtype=torch.float64)})
    assert "truncated frame" in _error_of(ch, raw[:-5])
    assert "truncated frame" in _error_of(ch, raw[:20])
    _good(ch)


def test_wrong_shape_and_dtype(ch):
    with pytest.raises(ProtocolError, match=r"x has shape \(2, 3\), expected \(\*, 8\)"):
        ch.call("logits", x=torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ProtocolError, match="x has dtype torch.float32, expected torch.float64"):
        ch.call("logits", x=torch.ones(2, toy.D_IN))
    with pytest.raises(ProtocolError, match="bad arguments for 'logits'"):
        ch.call("logits", y=torch.ones(2, toy.D_IN))
    with pytest.raises(ProtocolError, match="no remote method"):
        ch.call("no_such_method")
    # a tensor whose header lies about its shape never reaches the role
    payload = bytearray(codec.encode({"x": torch.ones(2, toy.D_IN, dtype=torch.float64)}))
    at = payload.index(b"t\x02\x02")  # tensor tag, float64 code, ndim 2
    payload[at + 3] = 5  # first dim 5 instead of 2
    ch._seq += 1
    body = ch._cipher.seal(0, ch.session_id, ch._seq, Kind.REQUEST, "logits", bytes(payload))
    from p3eft.runtime.frame import Flag

    raw = Frame(Kind.REQUEST, ch.session_id, ch._seq, "logits", body, Flag.ENCRYPTED).pack()
    assert "needs 320 bytes, header says 128" in _error_of(ch, raw)
    _good(ch)


def test_unknown_session(ch):
    raw = _raw_request(
        ch, "logits", {"x": torch.ones(1, toy.D_IN, dtype=torch.float64)}, session=new_session_id()
    )
    assert "ProtocolError: unknown session" in _error_of(ch, raw)
    _good(ch)


def test_replayed_sequence_number(ch):
    raw = _raw_request(ch, "logits", {"x": torch.ones(1, toy.D_IN, dtype=torch.float64)})
    assert unpack(ch.send_raw(raw), LIMIT).kind == Kind.RESPONSE
    assert "replayed sequence number" in _error_of(ch, raw)
    old = _raw_request(ch, "logits", {"x": torch.ones(1, toy.D_IN, dtype=torch.float64)}, seq=1)
    assert "replayed sequence number 1" in _error_of(ch, old)
    _good(ch)


def test_oversized_payload(ch):
    big = torch.zeros(LIMIT // 8 + 100, toy.D_IN, dtype=torch.float64)  # ~8x the server's limit
    with pytest.raises(ProtocolError, match="oversized|exceeds the limit"):
        ch.call("logits", x=big)
    just_over = torch.zeros(LIMIT // (8 * toy.D_IN) + 1, toy.D_IN, dtype=torch.float64)  # our own check
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        ch.call("logits", x=just_over)
    _good(ch)


def test_client_without_a_valid_certificate(net, ch, tmp_path):
    init_keys(tmp_path / "rogue")  # a CA the servers do not trust
    rogue = load_identity(tmp_path / "rogue", "data-owner")
    genuine_ca = load_identity(net["certs"], "data-owner").ca_pem
    forged = type(rogue)(rogue.name, genuine_ca, rogue.cert_pem, rogue.key_pem)
    with pytest.raises(PartyUnavailableError, match="cannot reach enclave|TLS"):
        NetworkChannel(net["url"], forged, "enclave", connect_timeout_s=2)
    anonymous = type(rogue)(rogue.name, genuine_ca, None, None)  # no client certificate at all
    with pytest.raises(PartyUnavailableError, match="cannot reach enclave|TLS|failed"):
        NetworkChannel(net["url"], anonymous, "enclave", connect_timeout_s=2)
    # a valid certificate of a party the cloud does not serve
    with pytest.raises(SecurityError, match="'data-owner' may not call cloud"):
        NetworkChannel(net["cloud_url"], load_identity(net["certs"], "data-owner"), "cloud")
    # a server presenting another party's certificate than the one we asked for
    with pytest.raises(PartyUnavailableError):
        NetworkChannel(
            net["cloud_url"], load_identity(net["certs"], "enclave"), "enclave", connect_timeout_s=2
        )
    _good(ch)


def test_failed_attestation_and_unattested_calls(net, ch, tmp_path):
    certs = net["certs"]
    ident = load_identity(certs, "data-owner")
    pub = read_key_file(certs, "platform-attest.pub")
    with pytest.raises(SecurityError, match="measurement .* is not the expected"):
        NetworkChannel(net["url"], ident, "enclave", verifier=SimulatedVerifier(pub, b"\x00" * 32))
    init_keys(tmp_path / "other")
    other_pub = read_key_file(tmp_path / "other", "platform-attest.pub")
    with pytest.raises(SecurityError, match="signature is not the platform's"):
        NetworkChannel(net["url"], ident, "enclave", verifier=SimulatedVerifier(other_pub))
    # a quote for another nonce (replayed evidence) is refused
    attestor = SimulatedAttestor(read_key_file(certs, "platform-attest.key"))
    old = attestor.evidence(b"a" * 32, b"k" * 32)
    with pytest.raises(SecurityError, match="does not answer our nonce"):
        SimulatedVerifier(pub).verify(old, b"b" * 32)
    # without attestation no payload reaches the enclave role
    plain = NetworkChannel(net["url"], ident, "enclave")
    with pytest.raises(SecurityError, match="not attested"):
        plain.call("logits", x=torch.ones(1, toy.D_IN, dtype=torch.float64))
    plain.close()
    _good(ch)


def test_access_rules_on_the_enclave(net, ch):
    with pytest.raises(SecurityError, match="host-only"):
        ch.call("state")
    with pytest.raises(SecurityError, match="'data-owner' may not call 'provision'"):
        ch.call("provision", tensors={}, done=False)
    with connect_attested(net["url"], net["certs"], "model-owner") as mo:
        with pytest.raises(SecurityError, match="'model-owner' may not call 'train_step'"):
            mo.call("train_step", **toy.batch(0))
        assert mo.call("info") == {"step": 0}
    _good(ch)


def test_sealing(tmp_path):
    secret = os.urandom(32)
    sealer = Sealer(sealing_key(secret, code_measurement()))
    state = {"w": torch.randn(4, 4), "step": 3}
    sealer.write(tmp_path / "c.sealed", state, "ckpt")
    assert torch.equal(sealer.read(tmp_path / "c.sealed", "ckpt")["w"], state["w"])
    blob = (tmp_path / "c.sealed").read_bytes()
    assert state["w"].numpy().tobytes() not in blob
    with pytest.raises(SecurityError, match="failed authentication"):
        Sealer(sealing_key(secret, b"\x01" * 32)).unseal(blob, "ckpt")  # another enclave build
    with pytest.raises(SecurityError, match="labelled"):
        sealer.unseal(blob, "model")
    tampered = bytearray(blob)
    tampered[-3] ^= 1
    with pytest.raises(SecurityError, match="failed authentication"):
        sealer.unseal(bytes(tampered), "ckpt")


def test_keys_init_cli(tmp_path, capsys):
    assert main(["keys", "init", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "ca.crt").is_file() and (tmp_path / "k" / "enclave.crt").is_file()
    assert oct((tmp_path / "k" / "enclave.key").stat().st_mode & 0o777) == "0o600"
    assert "BEGIN" not in capsys.readouterr().out  # keys are never printed
    assert main(["keys", "init", str(tmp_path / "k")]) == 2
    assert "already holds a CA" in capsys.readouterr().err
