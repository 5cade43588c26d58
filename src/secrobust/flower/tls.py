"""Flower's own TLS (SuperLink <-> SuperNodes, ``flwr`` <-> SuperLink): a CA and the SuperLink's certificate.

secrobust's links carry their own mutual TLS with the organisations' CAs (``secrobust init``); these files
are for Flower's links only, which SuperNode authentication needs. ``flower_tls`` writes ``ca.crt`` (each
SuperNode's ``--root-certificates`` and the connection's ``root-certificates``), ``superlink.crt`` and
``superlink.key`` (the SuperLink's ``--ssl-certfile`` / ``--ssl-keyfile``, named for every address the
SuperNodes and ``flwr`` use), and ``ca.key`` (0600), which signs nothing else here."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

FILES = ("ca.crt", "ca.key", "superlink.crt", "superlink.key")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def flower_tls(out: Path, addresses: Sequence[str], days: int = 365) -> dict[str, Path]:
    """Write a fresh P-256 CA and the SuperLink's certificate for ``addresses`` (IP addresses or DNS names,
    without ports) into ``out``; {"ca", "ca_key", "cert", "key"}: their paths. Refuses to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not addresses:
        raise ValueError("name at least one address the SuperNodes reach the SuperLink at (--address)")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    names: list[x509.GeneralName] = []
    for addr in addresses:
        if not addr or ":" in addr and not _is_ip(addr):
            raise ValueError(f"{addr!r}: an IP address or a DNS name, without a port")
        names.append(x509.IPAddress(ipaddress.ip_address(addr)) if _is_ip(addr) else x509.DNSName(addr))
    out = Path(out)
    paths = dict(zip(("ca", "ca_key", "cert", "key"), (out / name for name in FILES)))
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ValueError(f"{', '.join(existing)} exist already; remove them or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flower SuperLink CA")])

    def issue(subject: x509.Name, public: ec.EllipticCurvePublicKey, is_ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if not is_ca:
            builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(ca_key, hashes.SHA256())

    ca = issue(ca_name, ca_key.public_key(), True)
    cert = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]), key.public_key(), False)
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    paths["ca"].write_bytes(ca.public_bytes(pem))
    _write_private(paths["ca_key"], ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    _write_private(paths["key"], key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    return paths


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


__all__ = ["FILES", "flower_tls"]
