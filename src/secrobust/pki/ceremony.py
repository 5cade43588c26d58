"""The key ceremony: each server organisation's CA, each party's own key and signing request, signing.

``make_ca`` is run by each server organisation (S0's and S1's) on the machine that keeps its CA key.
``make_key`` is run by every party itself: the key never leaves it, and its signing request (CSR) goes to
the CA of each organisation that certifies it (``certs.orgs_of``: its own server's for a server or an
operator, both for the dealer and a worker). ``sign_csr`` is all a CA does: it refuses a CSR whose name
is no party's and one for a party its organisation does not certify (S0's CA never signs ``S1`` or
``operator:S1``). ``make_deployment_certs`` plays every role on one machine, for tests and local trials
only: both CAs and one folder per party that holds that party's key and no other.

Keys are ECDSA P-256, written with mode 0600 in folders made with mode 0700.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .certs import (
    ORGS,
    PartyPaths,
    ca_org,
    check_party_id,
    orgs_of,
    party_dir,
    party_paths,
    party_role,
    target_name,
    tls_name,
)

CA_DAYS = 3650
CERT_DAYS = 365


@dataclass(frozen=True)
class CA:
    """One organisation's certificate authority, loaded from its folder."""

    org: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def ca_files(folder: str | os.PathLike[str], org: str) -> tuple[Path, Path]:
    """(key, certificate) of ``org``'s CA in ``folder``: ``ca-s0.key`` and ``ca-s0.pem``."""
    d = Path(folder)
    return d / f"ca-{org.lower()}.key", d / f"ca-{org.lower()}.pem"


def make_ca(folder: str | os.PathLike[str], org: str, *, days: int = CA_DAYS) -> CA:
    """Create ``org``'s CA in ``folder``; refuses to replace an existing one."""
    if org not in ORGS:
        raise ValueError(f"a CA belongs to S0's or S1's organisation, not {org!r}")
    _check_days(days)
    key_path, cert_path = ca_files(folder, org)
    if key_path.exists() or cert_path.exists():
        raise ValueError(f"{key_path.parent} already holds {org}'s CA; remove it first to make a new one")
    _private_dir(Path(folder))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"secrobust CA of {org}")])
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
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(org, key, cert, cert_path)


def load_ca(folder: str | os.PathLike[str], org: str | None = None) -> CA:
    """The CA in ``folder`` (the only ``ca-*.key`` there, or ``org``'s)."""
    d = Path(folder)
    orgs = [o for o in ORGS if ca_files(d, o)[0].exists()] if org is None else [org]
    if len(orgs) != 1:
        found = "none" if not orgs else " and ".join(orgs)
        raise ValueError(f"{d} must hold exactly one CA (ca-s0.key or ca-s1.key made by 'secrobust ca'); found {found}")
    key_path, cert_path = ca_files(d, orgs[0])
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {orgs[0]}'s CA in {d}: {exc.strerror or exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    if ca_org(cert) != orgs[0]:
        raise ValueError(f"{cert_path} is not {orgs[0]}'s CA")
    return CA(orgs[0], key, cert, cert_path)


def key_files(folder: str | os.PathLike[str], party: str) -> tuple[Path, Path]:
    """(key, CSR) of ``party`` in ``folder``: ``<stem>.key`` and ``<stem>.csr``."""
    stem = tls_name(party)
    return Path(folder) / f"{stem}.key", Path(folder) / f"{stem}.csr"


def make_key(folder: str | os.PathLike[str], party: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate ``party``'s key (mode 0600) and its CSR in ``folder``; refuses to replace a key unless
    ``overwrite``. Returns (key path, CSR path)."""
    party_role(check_party_id(party))
    key_path, csr_path = key_files(folder, party)
    if key_path.exists() and not overwrite:
        raise ValueError(f"{key_path} exists; a party keeps its key (pass --overwrite to replace it)")
    _private_dir(Path(folder))
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key_path, key)
    csr_path.write_bytes(_csr(key, party))
    return key_path, csr_path


def sign_csr(ca: CA, csr_pem: bytes, *, days: int = CERT_DAYS) -> bytes:
    """The certificate (PEM) ``ca`` issues for the CSR; ValueError if the CSR is malformed, unsigned, not
    for a P-256 key, not named after a party, or for a party this organisation does not certify."""
    _check_days(days)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise ValueError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise ValueError("the signing request's signature does not verify")
    attrs = list(csr.subject)
    if len(attrs) != 1 or attrs[0].oid != NameOID.COMMON_NAME:
        raise ValueError(f"the subject must be CN=<party id> alone, got {csr.subject.rfc4514_string()!r}")
    party = str(attrs[0].value)
    check_party_id(party)
    party_role(party)
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{party}: the key must be ECDSA P-256 (made by 'secrobust keygen')")
    if ca.org not in orgs_of(party):
        raise ValueError(f"{ca.org}'s CA does not certify {party}: only {' and '.join(orgs_of(party))}'s does")
    now = _now()
    names = dict.fromkeys(["localhost", tls_name(party), target_name(party, ca.org)])
    san = x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
        .issuer_name(ca.cert.subject).public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def csr_party(csr_pem: bytes) -> str:
    """The CN a CSR asks for (unchecked: ``sign_csr`` checks)."""
    try:
        attrs = x509.load_pem_x509_csr(csr_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise ValueError("not a PEM certificate signing request") from None
    return str(attrs[0].value) if attrs else ""


def make_deployment_certs(root: str | os.PathLike[str], parties: list[str], *, days: int = CERT_DAYS,
                          overwrite: bool = False) -> dict[str, PartyPaths]:
    """Local trials and tests only: both CAs under ``root`` (``ca-s0/``, ``ca-s1/``, reused if present) and
    for each party a folder ``root/<stem>/`` with its own key, CSR, certificates and the two CA
    certificates. A party whose key exists keeps it (and its certificates) unless ``overwrite``."""
    ids = [check_party_id(p) for p in parties]
    for p in ids:
        party_role(p)
    if len({tls_name(p) for p in ids}) != len(ids):
        raise ValueError("party ids must be distinct, also in lower case with ':' as '-'")
    _check_days(days)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cas = {}
    for org in ORGS:
        folder = root / f"ca-{org.lower()}"
        cas[org] = load_ca(folder, org) if ca_files(folder, org)[0].exists() else make_ca(folder, org)
    out: dict[str, PartyPaths] = {}
    for party in ids:
        folder = party_dir(root, party)
        paths = party_paths(folder, party)
        key_path, csr_path = key_files(folder, party)
        fresh = overwrite or not key_path.exists()
        if fresh:
            make_key(folder, party, overwrite=True)
        elif not csr_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            csr_path.write_bytes(_csr(key, party))  # type: ignore[arg-type]
        for org in orgs_of(party):
            if fresh or not paths.certs[org].exists():
                paths.certs[org].write_bytes(sign_csr(cas[org], csr_path.read_bytes(), days=days))
        for org in ORGS:
            paths.cas[org].write_bytes(cas[org].cert_pem)
        out[party] = paths
    return out


def sign_with_key(key_pem: bytes, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature (DER) of ``data`` with a party's PEM key (the key ``make_key`` wrote);
    ValueError if it is not an unencrypted P-256 key."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("a party's key is ECDSA P-256")
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def signed_by(cert: x509.Certificate, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``sign_with_key``'s signature of ``data`` by the P-256 key of ``cert``."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _csr(key: ec.EllipticCurvePrivateKey, party: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _private_dir(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"certificates must be valid for at least one day, got {days!r}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


__all__ = ["CA", "CA_DAYS", "CERT_DAYS", "ca_files", "csr_party", "key_files", "load_ca", "make_ca",
           "make_deployment_certs", "make_key", "sign_csr", "sign_with_key", "signed_by"]
