"""A small certificate authority for a secrobust deployment, and loading of party identities.

Every party gets an ECDSA P-256 key and a certificate signed by the deployment CA: the servers
``S0`` and ``S1``, the ``dealer``, each worker ``worker:<i>``, and the ``operator`` that opens rounds
and reads their public outcome. The party id is the certificate's common name (CN), spelled exactly
as the protocol names the party; the receiving side of every gRPC call reads the CN from the TLS
session and requires it to equal the sender written in the message, so a party cannot speak for
another. The subject alternative names are ``localhost``, ``127.0.0.1`` and the party's TLS name
(``tls_name``: lower case, ':' as '-', e.g. ``s0``, ``worker-3``); a client connecting to a server
requires that name, so only S0's certificate can answer for S0.

Files written to ``out_dir``: ``ca.pem`` and ``ca.key`` (the CA; the key belongs offline once the
certificates are made), ``<tls name>.pem`` and ``<tls name>.key`` per party, keys with mode 0600. An
existing CA in ``out_dir`` is reused, so workers can be added to a running deployment.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PARTY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,63}$")
SERVER_IDS = ("S0", "S1")
DEALER_ID = "dealer"
OPERATOR_ID = "operator"
WORKER_PREFIX = "worker:"
CA_CN = "secrobust deployment CA"


@dataclass(frozen=True)
class PartyPaths:
    """Where one party's TLS material lives: its certificate, its key, and the CA certificate."""

    party: str
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Identity:
    """A party's TLS material in memory (PEM bytes), ready for gRPC credentials."""

    party: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, paths: PartyPaths) -> "Identity":
        """Read the files and check that the certificate's CN is the party id."""
        cert_pem = Path(paths.cert).read_bytes()
        cn = common_name(cert_pem)
        if cn != paths.party:
            raise ValueError(f"certificate {paths.cert} is for {cn!r}, not for party {paths.party!r}")
        return cls(paths.party, cert_pem, Path(paths.key).read_bytes(), Path(paths.ca).read_bytes())


def check_party_id(party: str) -> str:
    """Party ids are 1-64 characters of letters, digits, '.', ':', '-' (they become a CN and a file name)."""
    if not isinstance(party, str) or not PARTY_ID.match(party):
        raise ValueError(f"party id {party!r} is not allowed: use 1-64 of A-Z a-z 0-9 . : - "
                         "starting with a letter or digit")
    return party


def tls_name(party: str) -> str:
    """The DNS name a party's certificate carries and clients require: lower case, ':' as '-'."""
    return check_party_id(party).replace(":", "-").lower()


def worker_party(worker_id: int) -> str:
    """The party id of worker ``worker_id`` (the protocol's sender name for it)."""
    if isinstance(worker_id, bool) or not isinstance(worker_id, int) or worker_id < 0:
        raise ValueError(f"worker ids are non-negative integers, got {worker_id!r}")
    return f"{WORKER_PREFIX}{worker_id}"


def worker_index(party: str) -> int | None:
    """The worker id in a party id ``worker:<i>``, or None for any other party."""
    if not party.startswith(WORKER_PREFIX):
        return None
    digits = party[len(WORKER_PREFIX):]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        return None
    return int(digits)


def common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise ValueError("certificate has no single common name")
    return str(attrs[0].value)


def party_paths(cert_dir: str | os.PathLike[str], party: str) -> PartyPaths:
    """The conventional file names for ``party`` inside ``cert_dir``."""
    d = Path(cert_dir)
    stem = tls_name(party)
    return PartyPaths(party, d / f"{stem}.pem", d / f"{stem}.key", d / "ca.pem")


def standard_parties(workers: int | list[int]) -> list[str]:
    """S0, S1, the dealer, the operator, and ``worker:<i>`` for each worker id (or ids 0..workers-1)."""
    ids = list(range(workers)) if isinstance(workers, int) else list(workers)
    return [*SERVER_IDS, DEALER_ID, OPERATOR_ID, *(worker_party(i) for i in ids)]


def make_deployment_certs(out_dir: str | os.PathLike[str], parties: list[str], *, days: int = 365,
                          overwrite: bool = False) -> dict[str, PartyPaths]:
    """Create (or reuse) the CA in ``out_dir`` and a key and certificate for every party.

    Returns the paths per party. A party whose files exist is kept unless ``overwrite`` is set.
    """
    if days < 1:
        raise ValueError("certificates must be valid for at least one day")
    ids = [check_party_id(p) for p in parties]
    if len({tls_name(p) for p in ids}) != len(ids):
        raise ValueError("party ids must be distinct, also in lower case with ':' as '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _load_or_make_ca(out, days)
    result: dict[str, PartyPaths] = {}
    for party in ids:
        paths = party_paths(out, party)
        if overwrite or not (paths.cert.exists() and paths.key.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(ca_key, ca_cert, party, key.public_key(), days)
            _write_key(paths.key, key)
            paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result[party] = paths
    return result


def _load_or_make_ca(out: Path, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key_path.exists():
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC private key")
        return key, x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_CN)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(ca_key_path, key)
    ca_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, party: str,
           public_key: ec.EllipticCurvePublicKey, days: int) -> x509.Certificate:
    now = _now()
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(tls_name(party)),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
        .issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
