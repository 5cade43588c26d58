"""Two server organisations, each process with its own key: what a single CA holder can no longer do.

Real TLS handshakes over loopback: a certificate named S1 but issued by S0's CA is refused by a worker
connecting to S1, and a name certified by the wrong organisation is refused by the listening party; the
dealer shows each organisation the certificate that organisation's CA issued. A local deployment hands
each child process a configuration that points at its own key only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secrobust.deploy.config import load
from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.pki.ceremony import load_ca, make_deployment_certs
from secrobust.pki.certs import Identity, party_dir, standard_parties, tls_name
from secrobust.transport.grpc import (
    Endpoint,
    PartyUnreachable,
    PeerClient,
    RemoteRejected,
)

from .conftest import RecordingHandler, identity


class Handler(RecordingHandler):
    """The recording handler as another party, admitting everyone named in the deployment."""

    def __init__(self, party: str) -> None:
        super().__init__()
        self.party = party

    def admitted(self, caller: str) -> bool:
        return True


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    make_deployment_certs(root, standard_parties(1))
    return root


def _forge(root: Path, org: str, party: str) -> Identity:
    """What the holder of ``org``'s CA key can make: a certificate for any name, with the right DNS names,
    signed by its own CA (``sign`` would refuse; the key holder need not use it)."""
    ca = load_ca(root / f"ca-{org.lower()}", org)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names = [x509.DNSName(n) for n in ("localhost", tls_name(party), f"{tls_name(party)}.s0", f"{tls_name(party)}.s1")]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca.key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    genuine = identity(root, "S0")
    return Identity(party, key_pem, {"S0": pem, "S1": pem}, genuine.cas)


@pytest.fixture()
def serve() -> Iterator:
    started: list[Endpoint] = []

    def start(ident: Identity) -> str:
        ep = Endpoint(ident, "127.0.0.1:0", Handler(ident.party))
        started.append(ep)
        return f"127.0.0.1:{ep.start()}"

    yield start
    for ep in started:
        ep.stop(0)


def _status(ident: Identity, peer: str, address: str) -> dict:
    client = PeerClient(ident, peer, address, connect_timeout=1.0)
    try:
        return client.control("status")
    finally:
        client.close()


def test_a_certificate_for_s1_from_s0s_ca_is_refused_by_a_worker_connecting_to_s1(pki, serve):
    worker = identity(pki, "worker:0")
    genuine = serve(identity(pki, "S1"))
    assert _status(worker, "S1", genuine)["caller"] == "worker:0"
    impostor = serve(_forge(pki, "S0", "S1"))
    with pytest.raises(PartyUnreachable):
        _status(worker, "S1", impostor)
    impostor_s0 = serve(_forge(pki, "S1", "S0"))
    with pytest.raises(PartyUnreachable):
        _status(worker, "S0", impostor_s0)


def test_a_listening_party_refuses_a_name_certified_by_the_wrong_organisation(pki, serve):
    s0 = serve(identity(pki, "S0"))
    for org, party in (("S0", "S1"), ("S1", "worker:0"), ("S0", "operator:S1"), ("S1", "dealer")):
        with pytest.raises(RemoteRejected) as info:
            _status(_forge(pki, org, party), "S0", s0)
        assert info.value.code == "unauthenticated", (org, party)
    worker = identity(pki, "worker:0")
    s1_issued = Identity("worker:0", worker.key_pem, {"S0": worker.certs["S1"], "S1": worker.certs["S1"]}, worker.cas)
    with pytest.raises(RemoteRejected) as info:
        _status(s1_issued, "S0", s0)
    assert info.value.code == "unauthenticated"
    assert _status(identity(pki, "S1"), "S0", s0)["caller"] == "S1"
    assert _status(worker, "S0", s0)["caller"] == "worker:0"


def test_the_dealer_shows_each_organisation_its_own_certificate(pki, serve):
    dealer = serve(identity(pki, "dealer"))
    for party in ("S0", "S1", "operator:S0", "operator:S1"):
        assert _status(identity(pki, party), "dealer", dealer)["caller"] == party
    impostor = serve(_forge(pki, "S0", "dealer"))
    assert _status(identity(pki, "S0"), "dealer", impostor)["caller"] == "S0"   # S0's CA may certify it to S0
    with pytest.raises(PartyUnreachable):
        _status(identity(pki, "S1"), "dealer", impostor)                       # but never to S1


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    d = LocalDeployment(6, tmp_path_factory.mktemp("dep"),
                        LocalOptions(share_window_s=10.0, peer_timeout_s=10.0, connect_timeout_s=2.0,
                                     workers_per_process=2))
    with d:
        yield d


def _configs(argv: list[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, arg in enumerate(argv) if arg == "--config"]


def _private_keys(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes())


def test_each_child_process_is_given_only_its_own_key(dep):
    seen: set[str] = set()
    for child in dep.children.values():
        assert not {"--cert-dir", "--tls-dir"} & set(child.argv)
        for path in _configs(child.argv):
            cfg = load(path)
            seen.add(cfg.party)
            own = party_dir(dep.cert_dir, cfg.party)
            files = [cfg.key, *cfg.certs.values(), *cfg.cas.values()]
            assert all(f.parent == own for f in files), (child.name, files)
            assert _private_keys(own) == [cfg.key]
            assert cfg.identity().party == cfg.party
    assert seen == {p for p in standard_parties(6) if not p.startswith("operator")}
    assert dep.children["workers-0-1"].argv.count("--config") == 2
    assert _private_keys(party_dir(dep.cert_dir, "operator:S1")) == [party_dir(dep.cert_dir, "operator:S1") /
                                                                    "operator-s1.key"]
    assert dep.operator.sides == ("S0", "S1")
    assert {c.identity.party for c in dep.operator.clients.values()} == {"operator:S0", "operator:S1"}
