"""The key ceremony: two CAs, each party's own key and CSR, what a CA signs and refuses, file layout."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from secrobust.cli import app
from secrobust.pki.ceremony import (
    load_ca,
    make_ca,
    make_deployment_certs,
    make_key,
    sign_csr,
)
from secrobust.pki.certs import (
    Identity,
    common_name,
    issuer_org,
    operator_party,
    orgs_of,
    party_dir,
    party_paths,
    standard_parties,
    target_name,
    tls_name,
    worker_index,
)


def _csr(party: str, key=None, extra=()) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party), *extra])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    root = tmp_path_factory.mktemp("cas")
    return {org: make_ca(root / org, org) for org in ("S0", "S1")}


def test_operators_are_named_per_server():
    assert operator_party(0) == "operator:S0" and operator_party(1) == "operator:S1"
    with pytest.raises(ValueError):
        operator_party(2)
    assert tls_name("operator:S1") == "operator-s1"


def test_who_certifies_whom():
    assert orgs_of("S0") == ("S0",) and orgs_of("operator:S1") == ("S1",)
    assert orgs_of("dealer") == orgs_of("worker:4") == ("S0", "S1")
    assert issuer_org("worker:4", "S1") == "S1" and issuer_org("S1", "worker:4") == "S1"
    assert issuer_org("dealer", "operator:S0") == "S0" and issuer_org("S0", "S1") == "S0"
    assert target_name("dealer", "S1") == "dealer.s1" and target_name("S0", "S0") == "s0"
    with pytest.raises(ValueError, match="no connection"):
        issuer_org("worker:1", "dealer")


def test_every_party_gets_p256_certificates_from_the_cas_that_certify_it(tmp_path):
    paths = make_deployment_certs(tmp_path, standard_parties(2))
    assert set(paths) == {"S0", "S1", "operator:S0", "operator:S1", "dealer", "worker:0", "worker:1"}
    ca = {org: load_ca(tmp_path / f"ca-{org.lower()}", org).cert for org in ("S0", "S1")}
    for party, p in paths.items():
        assert set(p.certs) == set(orgs_of(party))
        for org, path in p.certs.items():
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party
            assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
            assert cert.public_key().curve.name == "secp256r1"
            cert.verify_directly_issued_by(ca[org])
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert {"localhost", tls_name(party), target_name(party, org)} <= set(san.get_values_for_type(x509.DNSName))
            assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        assert stat.S_IMODE(p.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(p.key.parent.stat().st_mode) == 0o700
        assert Identity.load(p).party == party


def test_each_party_folder_holds_its_own_key_and_no_other(tmp_path):
    make_deployment_certs(tmp_path, standard_parties(3))
    for party in standard_parties(3):
        folder = party_dir(tmp_path, party)
        keys = [f for f in folder.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes()]
        assert keys == [folder / f"{tls_name(party)}.key"]
    ca_keys = sorted(f.name for f in tmp_path.rglob("ca-*.key"))
    assert ca_keys == ["ca-s0.key", "ca-s1.key"]
    assert all(f.parent.name in ("ca-s0", "ca-s1") for f in tmp_path.rglob("ca-*.key"))


def test_existing_cas_and_keys_are_reused_so_workers_can_be_added(tmp_path):
    make_deployment_certs(tmp_path, ["S0"])
    ca_before = (tmp_path / "ca-s0" / "ca-s0.pem").read_bytes()
    key_before = (tmp_path / "s0" / "s0.key").read_bytes()
    make_deployment_certs(tmp_path, ["S0", "worker:7"])
    assert (tmp_path / "ca-s0" / "ca-s0.pem").read_bytes() == ca_before
    assert (tmp_path / "s0" / "s0.key").read_bytes() == key_before
    assert common_name((tmp_path / "worker-7" / "worker-7.s1.pem").read_bytes()) == "worker:7"


def test_identity_refuses_files_of_another_party_or_another_ca(tmp_path):
    make_deployment_certs(tmp_path, ["S0", "S1"])
    s0 = party_paths(tmp_path / "s0", "S0")
    s1 = party_paths(tmp_path / "s1", "S1")
    with pytest.raises(ValueError, match="is for 'S1'"):
        Identity.load(type(s0)("S0", s0.key, {"S0": s1.certs["S1"]}, s0.cas))
    with pytest.raises(ValueError, match="is S1's"):
        Identity.load(type(s0)("S0", s0.key, s0.certs, {"S0": s0.cas["S1"], "S1": s0.cas["S1"]}))
    with pytest.raises(ValueError, match="not for this party's key"):
        Identity.load(type(s0)("S0", s1.key, s0.certs, s0.cas))
    with pytest.raises(ValueError, match="cannot read"):
        Identity.load(type(s0)("S0", tmp_path / "nope.key", s0.certs, s0.cas))


def test_keygen_writes_a_private_key_and_a_csr_and_keeps_an_existing_key(tmp_path):
    key, csr = make_key(tmp_path / "w3", "worker:3")
    assert (key.name, csr.name) == ("worker-3.key", "worker-3.csr")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    req = x509.load_pem_x509_csr(csr.read_bytes())
    assert req.is_signature_valid and common_name_of(req) == "worker:3"
    with pytest.raises(ValueError, match="keeps its key"):
        make_key(tmp_path / "w3", "worker:3")
    with pytest.raises(ValueError, match="none of S0"):
        make_key(tmp_path / "x", "operator")


def common_name_of(req: x509.CertificateSigningRequest) -> str:
    return str(req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize(("org", "party"), [("S0", "S0"), ("S0", "operator:S0"), ("S1", "S1"), ("S1", "operator:S1"),
                                            ("S0", "dealer"), ("S1", "dealer"), ("S0", "worker:12"),
                                            ("S1", "worker:0")])
def test_a_ca_signs_the_parties_its_organisation_certifies(cas, org, party):
    cert = x509.load_pem_x509_certificate(sign_csr(cas[org], _csr(party)))
    cert.verify_directly_issued_by(cas[org].cert)
    assert cert.subject.rfc4514_string() == f"CN={party}"


@pytest.mark.parametrize(("org", "csr", "message"), [
    ("S0", lambda: _csr("S1"), "S0's CA does not certify S1"),
    ("S0", lambda: _csr("operator:S1"), "S0's CA does not certify operator:S1"),
    ("S1", lambda: _csr("S0"), "S1's CA does not certify S0"),
    ("S0", lambda: _csr("operator"), "none of S0, S1"),
    ("S0", lambda: _csr("intruder"), "none of S0, S1"),
    ("S0", lambda: _csr("worker:007"), "none of S0, S1"),
    ("S0", lambda: _csr("a b"), "not allowed"),
    ("S0", lambda: _csr("worker:1", extra=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "S0")]),
     "CN=<party id> alone"),
    ("S0", lambda: _csr("worker:1", key=ec.generate_private_key(ec.SECP384R1())), "P-256"),
    ("S0", lambda: _csr("worker:1", key=rsa.generate_private_key(65537, 2048)), "P-256"),
    ("S0", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
    ("S0", lambda: b"hello", "not a PEM"),
    ("S0", lambda: _tampered(_csr("worker:1")), "signature"),
])
def test_a_ca_refuses_bad_csrs(cas, org, csr, message):
    with pytest.raises(ValueError, match=message):
        sign_csr(cas[org], csr())


def _tampered(pem: bytes) -> bytes:
    """A CSR for worker:1 whose signature was made for another name (its CN bytes changed after signing)."""
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    bad = der.replace(b"worker:1", b"worker:2")
    import base64
    body = base64.encodebytes(bad).replace(b"\n", b"")
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + lines + b"\n-----END CERTIFICATE REQUEST-----\n"


def test_a_second_ca_for_an_organisation_is_refused(cas):
    with pytest.raises(ValueError, match="already holds"):
        make_ca(cas["S0"].cert_path.parent, "S0")
    with pytest.raises(ValueError, match="S0's or S1's organisation"):
        make_ca(cas["S0"].cert_path.parent / "x", "dealer")


def test_worker_ids_parse_strictly():
    assert worker_index("worker:12") == 12
    assert worker_index("worker:012") is None and worker_index("worker:") is None and worker_index("S0") is None


def test_the_key_ceremony_commands(tmp_path):
    run = CliRunner().invoke
    assert run(app, ["ca", "--org", "S0", "--out", str(tmp_path / "ca0")]).exit_code == 0
    assert run(app, ["ca", "--org", "S1", "--out", str(tmp_path / "ca1")]).exit_code == 0
    res = run(app, ["keygen", "--party", "worker:5", "--out", str(tmp_path / "w5")])
    assert res.exit_code == 0 and "S0's CA and S1's CA" in res.output
    for ca in ("ca0", "ca1"):
        res = run(app, ["sign", "--ca", str(tmp_path / ca), "--csr", str(tmp_path / "w5" / "worker-5.csr")])
        assert res.exit_code == 0, res.output
    assert run(app, ["keygen", "--party", "S1", "--out", str(tmp_path / "s1")]).exit_code == 0
    res = run(app, ["sign", "--ca", str(tmp_path / "ca0"), "--csr", str(tmp_path / "s1" / "s1.csr")])
    assert res.exit_code == 2 and "S0's CA does not certify S1" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s1" / "s1.s0.pem").exists()
    res = run(app, ["keygen", "--party", "intruder", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "none of S0, S1" in res.output
    for org in ("s0", "s1"):
        (tmp_path / "w5" / f"ca-{org}.pem").write_bytes((tmp_path / f"ca{org[1]}" / f"ca-{org}.pem").read_bytes())
    assert Identity.load(party_paths(tmp_path / "w5", "worker:5")).certs.keys() == {"S0", "S1"}


def test_certs_command_writes_one_folder_per_party(tmp_path):
    result = CliRunner().invoke(app, ["certs", "--out", str(tmp_path), "--workers", "3", "--party", "worker:9"])
    assert result.exit_code == 0, result.output
    for stem in ("s0", "s1", "operator-s0", "operator-s1", "dealer", "worker-0", "worker-2", "worker-9"):
        assert (tmp_path / stem / f"{stem}.key").exists()
    assert (tmp_path / "ca-s0" / "ca-s0.key").exists() and (tmp_path / "ca-s1" / "ca-s1.key").exists()
