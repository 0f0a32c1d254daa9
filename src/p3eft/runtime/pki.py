"""Development PKI: a CA and one key folder per party, for mutual TLS on every link (ours).

``p3eft keys init DIR`` calls :func:`init_keys`. Every party gets a folder holding only what it
needs, so a folder can be handed to that party alone::

    DIR/ca/             ca.crt, ca.key                  the CA; stays with whoever runs `keys init`
    DIR/enclave/        ca.crt, enclave.crt/.key, platform-attest.key, platform-seal.key
    DIR/cloud/          ca.crt, cloud.crt/.key
    DIR/model-owner/    ca.crt, model-owner.crt/.key, platform-attest.pub
    DIR/data-owner/     ca.crt, data-owner.crt/.key, platform-attest.pub
    DIR/data-owner-2/   ... one folder per further data owner (``--data-owners N``)

``platform-attest.*`` and ``platform-seal.key`` are the simulated TEE vendor's keys: verifiers check
quotes against the public half; only the enclave holds the private half and the sealing secret.
Every party refuses to start from a folder that holds a private key that is not its own
(:func:`load_identity`), which is checked by the files present, not by permission bits (root
reads everything). Certificates carry the party name as common name and DNS name, plus
``localhost`` and 127.0.0.1, and are valid for client and server use; clients pin the server's
party name, so a cloud certificate cannot impersonate the enclave. Private keys are written with
mode 0600 and are never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p3eft.errors import MissingResourceError, P3eftError, SecurityError, UnknownNameError
from p3eft.outputs import check_writable_dir

PARTIES = ("enclave", "cloud", "model-owner", "data-owner")
DATA_OWNER = "data-owner"
# what each party's folder holds besides ca.crt and its own pair
PARTY_EXTRAS = {
    "enclave": ("platform-attest.key", "platform-seal.key"),
    "cloud": (),
    "model-owner": ("platform-attest.pub",),
    DATA_OWNER: ("platform-attest.pub",),
}
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


def is_data_owner(party: str) -> bool:
    """``data-owner`` or ``data-owner-N``: the certificate names data owners get."""
    return party == DATA_OWNER or re.fullmatch(rf"{DATA_OWNER}-[1-9][0-9]*", party) is not None


def party_names(data_owners: int = 1) -> tuple[str, ...]:
    """Every party ``keys init`` makes: enclave, cloud, model owner and ``data_owners`` data owners."""
    if data_owners < 1:
        raise P3eftError("--data-owners must be at least 1")
    owners = [DATA_OWNER] + [f"{DATA_OWNER}-{i}" for i in range(2, data_owners + 1)]
    return ("enclave", "cloud", "model-owner", *owners)


def _extras(party: str) -> tuple[str, ...]:
    return PARTY_EXTRAS[DATA_OWNER if is_data_owner(party) else party]


def init_keys(
    directory: str | Path,
    data_owners: int = 1,
    force: bool = False,
    hosts: tuple[str, ...] = (),
) -> list[Path]:
    """Create the development CA, one key folder per party and the simulated platform keys.

    ``hosts`` adds DNS names or IP addresses to every certificate, for parties on other machines.
    """
    parties = party_names(data_owners)
    out = check_writable_dir(directory, "key folder")  # a file or an unwritable path: one line
    if (out / "ca" / "ca.key").exists() and not force:
        raise P3eftError(f"{out} already holds a CA (ca/ca.key); pass --force to replace every key in it")
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
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    platform = ed25519.Ed25519PrivateKey.generate()
    shared = {
        "platform-attest.key": (_pem_key(platform), True),
        "platform-attest.pub": (
            platform.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            False,
        ),
        "platform-seal.key": (os.urandom(32), True),
    }
    written = [_put(out / "ca", "ca.key", _pem_key(ca_key), True), _put(out / "ca", "ca.crt", ca_pem, False)]
    for party in parties:
        folder = out / party
        if folder.exists():
            for old in folder.iterdir():  # --force: nothing of a previous layout may stay behind
                if old.is_file() and old.suffix in (".key", ".crt", ".pub"):
                    old.unlink()
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
        written.append(_put(folder, "ca.crt", ca_pem, False))
        written.append(_put(folder, f"{party}.key", _pem_key(key), True))
        written.append(_put(folder, f"{party}.crt", cert.public_bytes(serialization.Encoding.PEM), False))
        for name in _extras(party):
            data, secret = shared[name]
            written.append(_put(folder, name, data, secret))
    return written


def _put(folder: Path, name: str, data: bytes, secret: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / name, data, secret)
    return folder / name


def check_folder(directory: str | Path, party: str) -> None:
    """Refuse a key folder that holds a private key other than ``party``'s own.

    Judged by the files present (root ignores permission bits): a cloud handed the whole key tree,
    or the CA's key, must not start.
    """
    d = Path(directory)
    if not d.is_dir():
        raise MissingResourceError(
            f"key folder {d} not found; run `p3eft keys init DIR` and pass DIR/{party}"
        )
    allowed = {f"{party}.key", *(n for n in _extras(party) if n.endswith(".key"))}
    foreign = sorted(
        str(p.relative_to(d))
        for p in d.rglob("*")
        if p.is_file() and p.suffix == ".key" and not (p.parent == d and p.name in allowed)
    )
    if foreign:
        raise SecurityError(
            f"{d} holds private keys that are not the {party}'s ({', '.join(foreign[:4])}); "
            f"give the {party} only its own folder from `p3eft keys init` (DIR/{party})"
        )


def load_identity(directory: str | Path, party: str) -> PartyIdentity:
    """Read the CA certificate and one party's pair from its own folder, checked: the folder holds
    no other party's key, the files parse, the key matches the certificate, the CA signed it, it is
    valid now and names ``party``. Each failure is one line naming the file."""
    if party not in PARTIES and not is_data_owner(party):
        raise UnknownNameError(f"unknown party {party!r}; known: {', '.join(PARTIES)} (or data-owner-N)")
    d = Path(directory)
    check_folder(d, party)
    files = [d / "ca.crt", d / f"{party}.crt", d / f"{party}.key"]
    for f in files:
        if not f.is_file():
            raise MissingResourceError(f"{f} not found; run `p3eft keys init DIR` and pass DIR/{party}")
    ca_pem, cert_pem, key_pem = (f.read_bytes() for f in files)
    ca = _load_cert(files[0], ca_pem)
    cert = _load_cert(files[1], cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise SecurityError(f"{files[2]} is not a readable unencrypted PEM private key") from err
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise SecurityError(f"{files[2]} does not belong to the certificate {files[1]}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise SecurityError(f"{files[1]} is not signed by the CA in {files[0]}") from err
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecurityError(
            f"{files[1]} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}); run `p3eft keys init --force`"
        )
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [party]:
        raise SecurityError(f"{files[1]} is the certificate of {names[0] if names else '?'!r}, not {party!r}")
    return PartyIdentity(party, ca_pem, cert_pem, key_pem)


def _load_cert(path: Path, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise SecurityError(f"{path} is not a readable PEM certificate") from err


def read_key_file(directory: str | Path, name: str) -> bytes:
    """Read one of the platform key files of a party's folder, with a clear error if it is missing."""
    path = Path(directory) / name
    if not path.is_file():
        raise MissingResourceError(f"{path} not found; this party's folder from `p3eft keys init` holds it")
    return path.read_bytes()
