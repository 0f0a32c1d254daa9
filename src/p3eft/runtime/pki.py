"""Development PKI: a CA and one certificate per party, for mutual TLS on every link (ours).

``p3eft keys init DIR`` calls :func:`init_keys`. The layout is flat and obvious::

    DIR/ca.crt                      trust anchor every party needs
    DIR/ca.key                      the CA's private key (keep it offline; only init uses it)
    DIR/<party>.crt, <party>.key    one pair per party: enclave, cloud, model-owner, data-owner
    DIR/platform-attest.pub         simulated TEE vendor key: verifiers check quotes against it
    DIR/platform-attest.key         ... and its private half, which only the enclave host reads
    DIR/platform-seal.key           simulated per-platform secret the sealing key is derived from

On real hosts each party receives only ``ca.crt``, its own pair and (verifiers) the platform public
key. Certificates carry the party name as common name and as a DNS name, plus ``localhost`` and
127.0.0.1, and are valid for client and server use; clients pin the server's party name, so a cloud
certificate cannot impersonate the enclave. Private keys are written with mode 0600 and are never
printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p3eft.errors import MissingResourceError, P3eftError, UnknownNameError

PARTIES = ("enclave", "cloud", "model-owner", "data-owner")
CA_NAME = "p3eft development CA"
VALID_DAYS = 825


@dataclass(frozen=True)
class PartyIdentity:
    """The PEM bytes one party needs to open or serve mutual-TLS links."""

    name: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _write(path: Path, data: bytes, secret: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p3eft dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_keys(
    directory: str | Path,
    parties: tuple[str, ...] = PARTIES,
    force: bool = False,
    hosts: tuple[str, ...] = (),
) -> list[Path]:
    """Create the development CA, one certificate per party and the simulated platform keys.

    ``hosts`` adds DNS names or IP addresses to every certificate, for parties on other machines.
    """
    out = Path(directory)
    if (out / "ca.key").exists() and not force:
        raise P3eftError(f"{out} already holds a CA (ca.key); pass --force to replace every key in it")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    written = []
    _write(out / "ca.key", _pem_key(ca_key), secret=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    written += [out / "ca.crt", out / "ca.key"]
    for party in parties:
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [
                x509.DNSName(party),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                *(_san_entry(h) for h in hosts if h not in (party, "localhost", "127.0.0.1")),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(party))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(out / f"{party}.key", _pem_key(key), secret=True)
        _write(out / f"{party}.crt", cert.public_bytes(serialization.Encoding.PEM), secret=False)
        written += [out / f"{party}.crt", out / f"{party}.key"]
    platform = ed25519.Ed25519PrivateKey.generate()
    _write(out / "platform-attest.key", _pem_key(platform), secret=True)
    _write(
        out / "platform-attest.pub",
        platform.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        secret=False,
    )
    _write(out / "platform-seal.key", os.urandom(32), secret=True)
    written += [out / "platform-attest.pub", out / "platform-attest.key", out / "platform-seal.key"]
    return written


def load_identity(directory: str | Path, party: str) -> PartyIdentity:
    """Read the CA certificate and one party's pair, with a clear error if any is missing."""
    if party not in PARTIES:
        raise UnknownNameError(f"unknown party {party!r}; known: {', '.join(PARTIES)}")
    d = Path(directory)
    files = [d / "ca.crt", d / f"{party}.crt", d / f"{party}.key"]
    for f in files:
        if not f.is_file():
            raise MissingResourceError(f"{f} not found; run `p3eft keys init {d}` first")
    return PartyIdentity(party, *(f.read_bytes() for f in files))


def read_key_file(directory: str | Path, name: str) -> bytes:
    """Read one of the platform key files, with a clear error if it is missing."""
    path = Path(directory) / name
    if not path.is_file():
        raise MissingResourceError(f"{path} not found; run `p3eft keys init {Path(directory)}` first")
    return path.read_bytes()
