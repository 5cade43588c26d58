"""The deployment CA: names, key usage, file permissions, reuse of an existing CA."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from secrobust.certs import (Identity, common_name, make_deployment_certs, party_paths, standard_parties, tls_name,
                             worker_index)
from secrobust.cli import app


def test_every_party_gets_a_ca_signed_p256_certificate_named_after_it(tmp_path):
    paths = make_deployment_certs(tmp_path, standard_parties(2))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert set(paths) == {"S0", "S1", "dealer", "operator", "worker:0", "worker:1"}
    for party, p in paths.items():
        cert = x509.load_pem_x509_certificate(p.cert.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", tls_name(party)} <= set(san.get_values_for_type(x509.DNSName))
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        assert stat.S_IMODE(p.key.stat().st_mode) == 0o600
        assert Identity.load(p).party == party


def test_an_existing_ca_is_reused_so_workers_can_be_added(tmp_path):
    make_deployment_certs(tmp_path, ["S0"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    s0_before = (tmp_path / "s0.pem").read_bytes()
    make_deployment_certs(tmp_path, ["S0", "worker:7"])
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "s0.pem").read_bytes() == s0_before
    assert common_name((tmp_path / "worker-7.pem").read_bytes()) == "worker:7"


def test_identity_refuses_a_certificate_of_another_party(tmp_path):
    make_deployment_certs(tmp_path, ["S0", "S1"])
    wrong = party_paths(tmp_path, "S0")
    with pytest.raises(ValueError, match="is for 'S1'"):
        Identity.load(type(wrong)("S0", tmp_path / "s1.pem", wrong.key, wrong.ca))


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x" * 65, "-lead"])
def test_bad_party_ids_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="not allowed"):
        make_deployment_certs(tmp_path, [bad])


def test_worker_ids_parse_strictly():
    assert worker_index("worker:12") == 12
    assert worker_index("worker:012") is None and worker_index("worker:") is None and worker_index("S0") is None


def test_certs_command_writes_the_deployment(tmp_path):
    result = CliRunner().invoke(app, ["certs", "--out", str(tmp_path), "--workers", "3", "--party", "worker:9"])
    assert result.exit_code == 0, result.output
    for stem in ("ca", "s0", "s1", "dealer", "operator", "worker-0", "worker-2", "worker-9"):
        assert (tmp_path / f"{stem}.pem").exists()
