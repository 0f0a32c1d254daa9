"""Bad input on a live mutual-TLS server: each is refused with a clear error, and the very next
good request is served. Servers run in this process on 127.0.0.1 with free ports."""

from __future__ import annotations

import importlib.util
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import torch

from p3eft.channel import remote
from p3eft.cli.main import main
from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime import codec
from p3eft.runtime.attestation import SimulatedAttestor, SimulatedVerifier, code_measurement
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.enclave_host import EnclaveHost
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.frame import Flag, Frame, Kind, aad, unpack
from p3eft.runtime.launch import connect_attested, enclave_sealing_key
from p3eft.runtime.pki import init_keys, load_identity, read_key_file
from p3eft.runtime.sealing import CheckpointStore, Sealer, sealing_key
from p3eft.runtime.server import PartyServer, ServerConfig
from p3eft.runtime.session import new_session_id

TOY = Path(__file__).parent / "toy_parties.py"
_spec = importlib.util.spec_from_file_location("toy_parties_refusals", TOY)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

LIMIT = 1 << 20


def _owners(peer: str) -> bool:
    return peer == "model-owner" or peer.startswith("data-owner")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    keys = d / "keys"
    init_keys(keys, data_owners=2)
    cloud = PartyServer(
        toy.make_cloud(),
        load_identity(keys / "cloud", "cloud"),
        ServerConfig(max_message_bytes=LIMIT, allowed_peers=frozenset({"enclave"})),
        tenant_factory=toy.make_cloud,
    )
    cport = cloud.start()
    ident = load_identity(keys / "enclave", "enclave")
    measurement = code_measurement([TOY])
    attestor = SimulatedAttestor(read_key_file(keys / "enclave", "platform-attest.key"), measurement)
    key = enclave_sealing_key(keys / "enclave", measurement)

    def connect_cloud(tenant, reset):
        return NetworkChannel(
            f"127.0.0.1:{cport}", ident, "cloud", max_message_bytes=LIMIT, tenant=tenant, reset_tenants=reset
        )

    host = EnclaveHost(
        toy.make_enclave,
        connect_cloud,
        d / "state",
        Sealer(key, d / "state"),
        key,
        checkpoint_every=2,
        policy=toy.make_enclave.host_policy,
    )
    enclave = PartyServer(
        host,
        ident,
        ServerConfig(max_message_bytes=LIMIT, peer_filter=_owners),
        attestor=attestor,
        resolver=host.resolve,
        attested_config={"toy": "yes", "seed": "random"},
        on_close=host.session_closed,
    )
    eport = enclave.start()
    url = f"127.0.0.1:{eport}"
    with _attach(url, keys, "model-owner") as mo:
        for chunk in toy.model_chunks():
            mo.call("provision", **chunk)
    yield {
        "keys": keys,
        "certs": keys / "data-owner",
        "url": url,
        "cloud_url": f"127.0.0.1:{cport}",
        "host": host,
        "cloud": cloud,
        "enclave": enclave,
        "dir": d,
    }
    enclave.stop()
    cloud.stop()


def _attach(url, keys, party, **kw):
    return connect_attested(url, keys / party, party, measured_files=(TOY,), **kw)


@pytest.fixture
def ch(net):
    c = _attach(net["url"], net["keys"], "data-owner", max_message_bytes=8 * LIMIT)
    yield c
    c.close()


def _good(ch) -> None:
    """The next good request is served."""
    out = ch.call("logits", x=torch.ones(2, toy.D_IN, dtype=torch.float64))
    assert out.shape == (2, toy.D_OUT)


def _seal(ch, method: str, body: bytes, seq: int, sid: bytes) -> bytes:
    head = aad(Kind.REQUEST, Flag.ENCRYPTED, sid, seq, method, len(body) + 16)
    return ch._cipher.seal(0, seq, head, body)


def _raw_request(
    ch, method: str, kwargs: dict, seq: int | None = None, session: bytes | None = None
) -> bytes:
    """A well-formed encrypted request frame on ``ch``'s session (for tampering)."""
    ch._seq += 1
    seq = ch._seq if seq is None else seq
    sid = ch.session_id if session is None else session
    body = _seal(ch, method, codec.encode(kwargs), seq, sid)
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
    role = next(iter(net["host"].jobs.values())).role
    assert torch.equal(net_out, InProcessChannel(role).call("logits", x=x))


def test_each_connection_gets_its_own_job_and_cloud_tenant(net):
    """Item 2, in-process: two data-owner connections train in two jobs, each with its own role
    instance on the cloud; a job and its cloud tenant end with the connection."""
    host, cloud = net["host"], net["cloud"]
    before_jobs = len(host.jobs)

    def tenants_match() -> bool:  # one cloud tenant per job (and one for an unclaimed upload)
        return cloud.tenant_count() == len(host.jobs) + (host.primed is not None)

    a = _attach(net["url"], net["keys"], "data-owner")
    b = _attach(net["url"], net["keys"], "data-owner-2")
    a.call("configure_training", lr=0.5)
    a.call("train_step", **toy.batch(0))
    assert a.call("export_adapter")["b"].abs().sum() > 0  # a trained
    assert b.call("export_adapter")["b"].abs().sum() == 0  # b's adapter untouched by a's step
    assert len(host.jobs) == before_jobs + 2 and tenants_match()
    a.close()
    b.close()
    assert len(host.jobs) == before_jobs and tenants_match()


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
    body = _seal(ch, "logits", bytes(payload), ch._seq, ch.session_id)
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
    rogue = load_identity(tmp_path / "rogue" / "data-owner", "data-owner")
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
            net["cloud_url"],
            load_identity(net["keys"] / "enclave", "enclave"),
            "enclave",
            connect_timeout_s=2,
        )
    _good(ch)


def test_failed_attestation_and_unattested_calls(net, ch, tmp_path):
    certs = net["certs"]
    ident = load_identity(certs, "data-owner")
    pub = read_key_file(certs, "platform-attest.pub")
    with pytest.raises(SecurityError, match="measurement .* is not the expected"):
        NetworkChannel(net["url"], ident, "enclave", verifier=SimulatedVerifier(pub, b"\x00" * 32))
    # the enclave runs a factory from outside the package: a verifier expecting the package alone refuses
    with pytest.raises(SecurityError, match="measurement .* is not the expected"):
        NetworkChannel(net["url"], ident, "enclave", verifier=SimulatedVerifier(pub))
    init_keys(tmp_path / "other")
    other_pub = read_key_file(tmp_path / "other" / "data-owner", "platform-attest.pub")
    with pytest.raises(SecurityError, match="signature is not the platform's"):
        NetworkChannel(net["url"], ident, "enclave", verifier=SimulatedVerifier(other_pub))
    # a quote for another nonce (replayed evidence) is refused
    attestor = SimulatedAttestor(read_key_file(net["keys"] / "enclave", "platform-attest.key"))
    old = attestor.evidence(b"a" * 32, b"k" * 32, {})
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
    with _attach(net["url"], net["keys"], "model-owner") as mo:
        with pytest.raises(SecurityError, match="'model-owner' may not call 'train_step'"):
            mo.call("train_step", **toy.batch(0))
        assert mo.call("info") == {"provisioned": True}  # its own upload's answer, nothing of any job
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
    with pytest.raises(SecurityError, match="sealed as 'ckpt', expected 'model'"):
        sealer.unseal(blob, "model")
    tampered = bytearray(blob)
    tampered[-3] ^= 1
    with pytest.raises(SecurityError, match="failed authentication"):
        sealer.unseal(bytes(tampered), "ckpt")


def test_sealed_state_is_bound_to_its_job_its_part_and_fresh(tmp_path):
    """Item 6: another job's checkpoint, another upload's (or index's) model part, an older genuine
    checkpoint and a deleted one are refused, each error naming the file (relative to the state)."""
    sealer = Sealer(sealing_key(os.urandom(32), code_measurement()), tmp_path)
    mine = CheckpointStore(tmp_path / "jobs" / "a", sealer, "p3eft-checkpoint/up1/a")
    other = CheckpointStore(tmp_path / "jobs" / "b", sealer, "p3eft-checkpoint/up1/b")
    other.save({"calls": 9})
    mine.save({"calls": 2})
    old = mine.path.read_bytes()
    mine.save({"calls": 4})
    assert mine.load() == {"calls": 4}
    (mine.path).write_bytes(other.path.read_bytes())  # another job's checkpoint
    with pytest.raises(SecurityError, match=r"jobs/a/checkpoint.sealed is sealed as .*/b', expected .*/a'"):
        mine.load()
    mine.path.write_bytes(old)  # an older genuine checkpoint of this very job
    with pytest.raises(
        SecurityError, match=r"jobs/a/checkpoint.sealed is checkpoint 1, older than checkpoint 2"
    ):
        mine.load()
    mine.path.unlink()  # deleted
    with pytest.raises(SecurityError, match=r"jobs/a/checkpoint.sealed is gone after checkpoint 2"):
        mine.load()
    # model parts are bound to their upload and index
    sealer.write(tmp_path / "model" / "part-000001.sealed", {"t": 1}, "p3eft-model-part/up1/1")
    with pytest.raises(
        SecurityError, match=r"model/part-000001.sealed is sealed as 'p3eft-model-part/up1/1'"
    ):
        sealer.read(tmp_path / "model" / "part-000001.sealed", "p3eft-model-part/up1/0")
    with pytest.raises(SecurityError, match="sealed as"):
        sealer.read(tmp_path / "model" / "part-000001.sealed", "p3eft-model-part/up2/1")
    # negative control: the right label reads
    assert sealer.read(tmp_path / "model" / "part-000001.sealed", "p3eft-model-part/up1/1") == {"t": 1}


def test_client_refuses_an_enclave_that_lost_sealed_state():
    """Item 6: the data owner remembers the newest checkpoint the enclave reported; an enclave that
    resumes the job from older state (deleted or rolled-back checkpoint) is refused."""
    from p3eft.runtime.resilient import ResilientChannel

    class FakeEnclave:
        calls, sealed = 0, 0

        def call(self, method, **kw):
            if method == "runtime_status":
                return {"calls": self.calls, "checkpoint_calls": self.sealed, "last_index": self.calls}
            if method == "train_step":
                FakeEnclave.calls += 1
                FakeEnclave.sealed = FakeEnclave.calls - FakeEnclave.calls % 2
            return {}

        def close(self):
            pass

    ch = ResilientChannel(FakeEnclave, wait_s=1.0, prune_every=2)
    ch.replay_methods = frozenset({"train_step"})
    for _ in range(4):
        ch.call("train_step")
    ch._status()  # it has seen checkpoint 4
    ch._recover(None)  # negative control: an enclave that kept its state resumes fine
    FakeEnclave.calls = FakeEnclave.sealed = 0  # restarted with its checkpoint gone
    with pytest.raises(SecurityError, match="sealed a checkpoint after call 4: its sealed state was deleted"):
        ch._recover(None)


def test_forged_sequence_numbers_do_not_advance_the_session(net, ch):
    """Item 3: a frame with sequence 2^64-1, or a flipped high bit (CRC recomputed, as an attacker
    would), fails authentication and leaves the session as it was: the genuine frame then passes."""
    genuine = _raw_request(ch, "logits", {"x": torch.ones(1, toy.D_IN, dtype=torch.float64)})
    for forged_seq in (2**64 - 1, unpack(genuine, LIMIT).seq | (1 << 63)):
        f = unpack(genuine, LIMIT)
        forged = Frame(f.kind, f.session, forged_seq, f.method, f.payload, f.flags).pack()  # CRC redone
        assert "failed authentication" in _error_of(ch, forged)
    assert unpack(ch.send_raw(genuine), LIMIT).kind == Kind.RESPONSE
    # on an unencrypted link, the CRC now covers the header: a flipped sequence bit is caught
    flipped = bytearray(Frame(Kind.REQUEST, ch.session_id, 99, "logits", b"x").pack())
    flipped[24 + 7] ^= 0x80
    with pytest.raises(ProtocolError, match="checksum"):
        unpack(bytes(flipped), LIMIT)
    _good(ch)


def test_same_certificate_cannot_hijack_a_bound_session(net, ch):
    """Item 4: a second process with the same certificate, knowing the victim's session id, cannot
    close, ping, re-attest or re-bind it: every control call must carry the session key."""
    thief = NetworkChannel(net["url"], load_identity(net["certs"], "data-owner"), "enclave")
    victim = ch.session_id
    for i, (method, kwargs) in enumerate(
        [
            ("_p3eft.close", {}),
            ("_p3eft.ping", {}),
            ("_p3eft.attest", {"nonce": b"n" * 32}),
            ("_p3eft.bind", {"public_key": b"k" * 32}),
        ]
    ):
        raw = Frame(Kind.REQUEST, victim, 10**6 + i, method, codec.encode(kwargs)).pack()
        assert "not authenticated with it" in _error_of(thief, raw)
    thief.close()
    # the genuine owner cannot re-attest its bound session either (it opens a new one instead)
    with pytest.raises(SecurityError, match="already attested and bound"):
        ch._exchange("_p3eft.attest", {"nonce": b"n" * 32})
    _good(ch)
    assert ch.ping()["party"] == "enclave"


def test_session_quota_refuses_instead_of_evicting(net):
    """Item 5: a party that opens many sessions hits its own quota; nobody's live session is evicted."""
    keys = net["keys"]
    server = PartyServer(
        toy.make_cloud(),
        load_identity(keys / "cloud", "cloud"),
        ServerConfig(peer_filter=lambda p: p.startswith("data-owner"), sessions_per_party=3, max_sessions=5),
    )
    port = server.start()
    try:
        victim = NetworkChannel(
            f"127.0.0.1:{port}", load_identity(keys / "data-owner", "data-owner"), "cloud"
        )
        flood = [
            NetworkChannel(f"127.0.0.1:{port}", load_identity(keys / "data-owner-2", "data-owner-2"), "cloud")
            for _ in range(3)
        ]
        with pytest.raises(ProtocolError, match="already has 3 open sessions"):
            NetworkChannel(f"127.0.0.1:{port}", load_identity(keys / "data-owner-2", "data-owner-2"), "cloud")
        assert victim.ping()["party"] == "cloud"  # still alive
        for f in flood:
            f.close()
        victim.close()
    finally:
        server.stop()


class _Sleeper:
    @remote
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_concurrency_cap_refuses_at_once(net, call_when_free):
    """Item 7: calls beyond ``max_concurrent_rpcs`` are refused at once (bounding the memory a flood
    of large frames can take), and served again once the slot is free."""
    keys = net["keys"]
    server = PartyServer(
        _Sleeper(),
        load_identity(keys / "cloud", "cloud"),
        ServerConfig(allowed_peers=frozenset({"enclave"}), max_concurrent_rpcs=1, workers=2),
    )
    port = server.start()
    ident = load_identity(keys / "enclave", "enclave")
    try:
        a = NetworkChannel(f"127.0.0.1:{port}", ident, "cloud")
        b = NetworkChannel(f"127.0.0.1:{port}", ident, "cloud")
        t = threading.Thread(target=a.call, args=("nap",), kwargs={"seconds": 1.5})
        t.start()
        time.sleep(0.5)
        with pytest.raises(ProtocolError, match="busy"):
            b.call("nap", seconds=0.0)
        t.join()
        assert call_when_free(lambda: b.call("nap", seconds=0.0)) == 0.0  # served once the slot is free
        a.close()
        b.close()
    finally:
        server.stop()


def test_absurd_tensor_headers_are_protocol_errors(net):
    """Item 7: absurd tensor shapes in a request are a ProtocolError, never an internal error."""
    keys = net["keys"]
    server = PartyServer(
        _Sleeper(), load_identity(keys / "cloud", "cloud"), ServerConfig(allowed_peers=frozenset({"enclave"}))
    )
    port = server.start()
    try:
        b = NetworkChannel(f"127.0.0.1:{port}", load_identity(keys / "enclave", "enclave"), "cloud")
        for shape in ((0, 2**63), (2**40, 2**40)):
            payload = bytearray(codec.encode({"seconds": torch.zeros(0, 3)}))
            at = payload.index(b"t\x01\x02")
            struct.pack_into("<QQ", payload, at + 3, *shape)
            b._seq += 1
            raw = Frame(Kind.REQUEST, b.session_id, b._seq, "nap", bytes(payload)).pack()
            msg = _error_of(b, raw)
            assert msg.startswith("ProtocolError") and "internal error" not in msg, msg
        b.close()
    finally:
        server.stop()


def test_parties_refuse_folders_with_foreign_keys(net, tmp_path, capsys):
    """Item 8: each party refuses a key folder that holds a private key not its own (judged by the
    files present, which holds even for root), and the documented per-party folders work."""
    keys = net["keys"]
    for party in ("cloud", "enclave", "model-owner", "data-owner"):
        with pytest.raises(SecurityError, match="holds private keys that are not"):
            load_identity(keys, party)  # the whole tree, CA key included
    with pytest.raises(SecurityError, match=r"enclave.key"):
        load_identity(keys / "enclave", "cloud")  # the cloud handed the enclave's folder
    assert main(["serve", "cloud", "--certs", str(keys)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ca/ca.key" in err[0]
    # negative control: its own folder loads
    assert load_identity(keys / "cloud", "cloud").name == "cloud"


def test_certificate_errors_are_one_line(net, tmp_path, capsys):
    """Issue 14.3: a corrupt certificate, a key of another party and a certificate from another CA
    each end as one line naming the file (CLI exit 2), not a traceback."""
    import shutil

    keys = net["keys"]
    bad = tmp_path / "cloud"
    shutil.copytree(keys / "cloud", bad)
    (bad / "cloud.crt").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert main(["serve", "cloud", "--certs", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cloud.crt is not a readable PEM certificate" in err[0]
    shutil.copy(keys / "cloud" / "cloud.crt", bad / "cloud.crt")
    init_keys(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "cloud" / "cloud.key", bad / "cloud.key")
    with pytest.raises(SecurityError, match="cloud.key does not belong to the certificate"):
        load_identity(bad, "cloud")
    shutil.copy(tmp_path / "other" / "cloud" / "cloud.crt", bad / "cloud.crt")
    with pytest.raises(SecurityError, match="cloud.crt is not signed by the CA"):
        load_identity(bad, "cloud")


def test_corrupt_platform_keys_are_one_line(net, tmp_path, capsys):
    """Issue 14.3: a corrupt platform-attest.key (enclave) or platform-attest.pub (the parties that
    verify) is one line naming the file, not cryptography's ValueError traceback."""
    import shutil

    garbage = b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
    with pytest.raises(SecurityError, match=r"platform-attest\.key\) is not a readable PEM key"):
        SimulatedAttestor(garbage)
    with pytest.raises(SecurityError, match=r"platform-attest\.pub\) is not a readable PEM key"):
        SimulatedVerifier(b"not a key at all")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SecurityError, match="must be Ed25519"):  # a readable key of the wrong kind
        SimulatedVerifier(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*spki))
    enclave = tmp_path / "enclave"
    shutil.copytree(net["keys"] / "enclave", enclave)
    (enclave / "platform-attest.key").write_bytes(garbage)
    argv = ["serve", "enclave", "--certs", str(enclave), "--cloud", "127.0.0.1:1"]
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "platform-attest.key) is not a readable PEM key" in err[0], err


def test_constant_seed_is_refused(net, tmp_path, capsys):
    """Item 1: the session seed never comes from the command line, and a constant seed is refused."""
    base = ["serve", "enclave", "--certs", str(net["keys"] / "enclave"), "--cloud", "127.0.0.1:1"]
    base += ["--state-dir", str(tmp_path / "state")]
    assert main([*base, "--session-seed", "11" * 32]) == 2  # the option no longer exists
    capsys.readouterr()
    (tmp_path / "zero.hex").write_text("00" * 32)
    assert main([*base, "--session-seed-file", str(tmp_path / "zero.hex")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing a constant session seed" in err[0]
    from p3eft.runtime.launch import check_session_seed

    assert check_session_seed(bytes(range(32))) == bytes(range(32))  # negative control


def test_any_role_served_by_any_party(net):
    """The generic API other schemes use: the model owner's folder serves a role on 127.0.0.1, a data
    owner connects with its own folder; a party the server does not admit is refused."""
    from p3eft.runtime.launch import open_party_channel, start_party

    keys = net["keys"]
    server = start_party(
        _Sleeper(), keys / "model-owner", "model-owner", allowed_peers=frozenset({"data-owner"})
    )
    try:
        url = f"127.0.0.1:{server.port}"
        with open_party_channel(url, keys / "data-owner", "data-owner", "model-owner") as ch:
            assert ch.call("nap", seconds=0.0) == 0.0
        with pytest.raises(SecurityError, match="'data-owner-2' may not call model-owner"):
            open_party_channel(url, keys / "data-owner-2", "data-owner-2", "model-owner")
    finally:
        server.stop()


def test_keys_init_cli(tmp_path, capsys):
    assert main(["keys", "init", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "ca" / "ca.crt").is_file() and (
        tmp_path / "k" / "enclave" / "enclave.crt"
    ).is_file()
    assert oct((tmp_path / "k" / "enclave" / "enclave.key").stat().st_mode & 0o777) == "0o600"
    assert "BEGIN" not in capsys.readouterr().out  # keys are never printed
    assert main(["keys", "init", str(tmp_path / "k")]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert main(["keys", "init", str(tmp_path / "n"), "--data-owners", "3"]) == 0
    for party in ("data-owner", "data-owner-2", "data-owner-3"):  # distinct identities, own folders
        assert sorted(p.name for p in (tmp_path / "n" / party).iterdir()) == sorted(
            ["ca.crt", f"{party}.crt", f"{party}.key", "platform-attest.pub"]
        )
    assert sorted(p.name for p in (tmp_path / "n" / "cloud").iterdir()) == [
        "ca.crt",
        "cloud.crt",
        "cloud.key",
    ]
