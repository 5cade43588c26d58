"""Party names, the two server organisations' trust rules, and loading a party's TLS identity.

Party ids are the certificates' common names (CN), spelled exactly as the protocol names the party:
the servers ``S0`` and ``S1``, their operators ``operator:S0`` and ``operator:S1``, the ``dealer`` and
each worker ``worker:<i>``. The receiving side of every gRPC call reads the CN from the TLS session and
requires it to equal the sender written in the message, so a party cannot speak for another.

Two certificate authorities, one per server organisation (``ORGS``), so that no single key holder can
stand in for both servers. S0's CA certifies S0 and ``operator:S0``; S1's CA certifies S1 and
``operator:S1``. The dealer and every worker hold one key with *two* certificates, one from each CA, and
show each server the one its own CA issued: a server trusts its own CA for everyone but the other
server (and that server's operator), whom it trusts only from the other CA. With one CA for the workers,
its holder could pose as a worker at the other server (S1 fetching worker i's share key from S0 would
hold both shares of x_i); with one CA for the dealer, its holder could hand the other server a triple
it knows. ``issuer_org`` states the rule; ``Identity.admits`` and the per-peer roots apply it.

A certificate's DNS names are ``localhost``, ``127.0.0.1`` and the party's TLS name (``tls_name``:
lower case, ':' as '-', e.g. ``s0``, ``operator-s1``, ``worker-3``); a certificate of the dealer or a
worker issued by org ``S0`` also carries ``<tls name>.s0`` (``target_name``), which clients of that
organisation require, so the dealer shows S1's side the certificate S1's CA issued (TLS SNI). Key
generation and signing are in ``secrobust.pki.ceremony``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

PARTY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,63}$")
SERVER_IDS = ("S0", "S1")
ORGS = SERVER_IDS
DEALER_ID = "dealer"
OPERATOR_PREFIX = "operator:"
WORKER_PREFIX = "worker:"
ROLES = ("server", "operator", "dealer", "worker")


def check_party_id(party: str) -> str:
    """Party ids are 1-64 characters of letters, digits, '.', ':', '-' (they become a CN and a file name)."""
    if not isinstance(party, str) or not PARTY_ID.match(party):
        raise ValueError(f"party id {party!r} is not allowed: use 1-64 of A-Z a-z 0-9 . : - "
                         "starting with a letter or digit")
    return party


def tls_name(party: str) -> str:
    """The DNS name a party's certificates carry and its file stem: lower case, ':' as '-'."""
    return check_party_id(party).replace(":", "-").lower()


def operator_party(server: int) -> str:
    """The party id of server ``server``'s operator: ``operator:S0`` or ``operator:S1``."""
    if isinstance(server, bool) or server not in (0, 1):
        raise ValueError(f"a server index is 0 or 1, got {server!r}")
    return f"{OPERATOR_PREFIX}{SERVER_IDS[server]}"


def operator_server(party: str) -> int | None:
    """The index of the server whose operator ``party`` is, or None for any other party."""
    for i in (0, 1):
        if party == operator_party(i):
            return i
    return None


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


def standard_parties(workers: int | list[int]) -> list[str]:
    """S0, S1, their operators, the dealer, and ``worker:<i>`` for each worker id (or ids 0..workers-1)."""
    ids = list(range(workers)) if isinstance(workers, int) else list(workers)
    return [*SERVER_IDS, operator_party(0), operator_party(1), DEALER_ID, *(worker_party(i) for i in ids)]


def party_role(party: str) -> str:
    """``server``, ``operator``, ``dealer`` or ``worker``; ValueError for a name no party has."""
    if party in SERVER_IDS:
        return "server"
    if operator_server(party) is not None:
        return "operator"
    if party == DEALER_ID:
        return "dealer"
    if worker_index(party) is not None:
        return "worker"
    raise ValueError(f"party {party!r} is none of S0, S1, operator:S0, operator:S1, dealer, worker:<i>")


def orgs_of(party: str) -> tuple[str, ...]:
    """The organisations whose CA certifies ``party``: its own for a server or an operator, both for the
    dealer and the workers (who talk to both servers)."""
    role = party_role(party)
    if role == "server":
        return (party,)
    if role == "operator":
        return (SERVER_IDS[operator_server(party)],)  # type: ignore[index]
    return ORGS


def issuer_org(party: str, peer: str) -> str:
    """The organisation whose CA must have issued the certificate ``party`` shows ``peer`` (either
    direction of a connection): its own organisation, or, for the dealer and workers, the peer's."""
    own = orgs_of(party)
    if len(own) == 1:
        return own[0]
    other = orgs_of(peer)
    if len(other) == 1:
        return other[0]
    raise ValueError(f"{party} and {peer} have no connection in a deployment")


def target_name(party: str, org: str) -> str:
    """The DNS name a client of organisation ``org`` requires from ``party``'s certificate."""
    return tls_name(party) if len(orgs_of(party)) == 1 else f"{tls_name(party)}.{org.lower()}"


def common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise ValueError("certificate has no single common name")
    return str(attrs[0].value)


def ca_org(cert: x509.Certificate) -> str:
    """The organisation (S0 or S1) a secrobust CA certificate belongs to (its O attribute)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(attrs[0].value) if len(attrs) == 1 else ""
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if org not in ORGS or not is_ca:
        raise ValueError(f"{cert.subject.rfc4514_string()} is not the CA of S0 or S1 (made by 'secrobust ca')")
    return org


@functools.lru_cache(maxsize=4096)
def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether the CA certificate ``ca_pem`` signed the certificate ``cert_pem`` (cached)."""
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class PartyPaths:
    """Where one party's TLS material lives: its key, its certificate per issuing organisation, and the
    certificate of each organisation's CA."""

    party: str
    key: Path
    certs: Mapping[str, Path]
    cas: Mapping[str, Path]


def party_paths(folder: str | os.PathLike[str], party: str) -> PartyPaths:
    """The conventional files of ``party`` in its own folder: ``<stem>.key``, ``<stem>.<org>.pem`` per
    organisation that certifies it, ``ca-s0.pem`` and ``ca-s1.pem`` (stem: ``tls_name``)."""
    d = Path(folder)
    stem = tls_name(party)
    return PartyPaths(party, d / f"{stem}.key", {o: d / f"{stem}.{o.lower()}.pem" for o in orgs_of(party)},
                      {o: d / f"ca-{o.lower()}.pem" for o in ORGS})


def party_dir(root: str | os.PathLike[str], party: str) -> Path:
    """The folder of ``party`` under a deployment folder made by ``secrobust certs`` or ``init``."""
    return Path(root) / tls_name(party)


@dataclass(frozen=True)
class Identity:
    """A party's TLS material in memory (PEM bytes): one key, its certificate per issuing organisation,
    and both organisations' CA certificates."""

    party: str
    key_pem: bytes
    certs: Mapping[str, bytes]
    cas: Mapping[str, bytes]

    @classmethod
    def load(cls, paths: PartyPaths) -> "Identity":
        """Read the files and check them (``check``); errors name the file at fault."""
        def read(path: Path) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"{paths.party}: cannot read {path}: {exc.strerror or exc}") from None

        ident = cls(paths.party, read(paths.key), {o: read(p) for o, p in paths.certs.items()},
                    {o: read(p) for o, p in paths.cas.items()})
        return ident.check({**{f"certificate from {o}": p for o, p in paths.certs.items()},
                            **{f"CA of {o}": p for o, p in paths.cas.items()}, "key": paths.key})

    def check(self, where: Mapping[str, Path] | None = None) -> "Identity":
        """Raise ValueError unless: both CA certificates are the CAs of S0 and S1, there is exactly one
        certificate per organisation that certifies this party, each names the party and was issued by
        that organisation's CA, and the key is the certificates' key."""
        where = where or {}

        def at(label: str) -> str:
            return f" ({where[label]})" if label in where else ""

        if set(self.cas) != set(ORGS):
            raise ValueError(f"{self.party}: needs the CA certificates of S0 and S1, got {sorted(self.cas)}")
        for org, pem in self.cas.items():
            try:
                got = ca_org(x509.load_pem_x509_certificate(pem))
            except ValueError as exc:
                raise ValueError(f"{self.party}: CA of {org}{at(f'CA of {org}')}: {exc}") from None
            if got != org:
                raise ValueError(f"{self.party}: the CA certificate given for {org}{at(f'CA of {org}')} is {got}'s")
        if set(self.certs) != set(orgs_of(self.party)):
            raise ValueError(f"{self.party} needs a certificate from the CA of each of {list(orgs_of(self.party))}, "
                             f"got {sorted(self.certs)}")
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.party}: the key{at('key')} is not an unencrypted PEM private key: {exc}") from None
        for org, pem in self.certs.items():
            label = f"certificate from {org}"
            cn = common_name(pem)
            if cn != self.party:
                raise ValueError(f"{label}{at(label)} is for {cn!r}, not for party {self.party!r}")
            if not issued_by(pem, self.cas[org]):
                raise ValueError(f"{self.party}: the {label}{at(label)} was not issued by {org}'s CA")
            if x509.load_pem_x509_certificate(pem).public_key() != key.public_key():
                raise ValueError(f"{self.party}: the {label}{at(label)} is not for this party's key{at('key')}")
        return self

    def cert_for(self, peer: str) -> bytes:
        """The certificate to show ``peer``: the one issued by the organisation ``peer`` trusts for us."""
        return self.certs[issuer_org(self.party, peer)]

    def roots_for(self, peer: str) -> bytes:
        """The only CA a connection to ``peer`` trusts: the one that certifies ``peer`` towards us."""
        return self.cas[issuer_org(peer, self.party)]

    def target_for(self, peer: str) -> str:
        """The DNS name ``peer``'s certificate must carry on a connection from us."""
        return target_name(peer, issuer_org(peer, self.party))

    def key_cert_pairs(self) -> list[tuple[bytes, bytes]]:
        """(key, certificate) per certificate, for a listening party (the client's SNI picks one)."""
        return [(self.key_pem, self.certs[o]) for o in ORGS if o in self.certs]

    def trusted_roots(self) -> bytes:
        """Both CA certificates: a listening party's TLS layer accepts either, then ``admits`` decides."""
        return b"".join(self.cas[o] for o in ORGS)

    def admits(self, caller: str, cert_pem: bytes) -> bool:
        """Whether ``cert_pem`` (the caller's verified certificate, CN ``caller``) was issued by the CA
        that certifies ``caller`` towards us: a name certified by the wrong organisation is refused."""
        try:
            org = issuer_org(caller, self.party)
        except ValueError:
            return False
        return issued_by(cert_pem, self.cas[org])


__all__ = ["DEALER_ID", "Identity", "ORGS", "OPERATOR_PREFIX", "PartyPaths", "ROLES", "SERVER_IDS", "WORKER_PREFIX",
           "ca_org", "check_party_id", "common_name", "issued_by", "issuer_org", "operator_party", "operator_server",
           "orgs_of", "party_dir", "party_paths", "party_role", "standard_parties", "target_name", "tls_name",
           "worker_index", "worker_party"]
