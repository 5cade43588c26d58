"""Mutual TLS for both lanes (gRPC and the bulk lane): what a party shows, what it trusts, who called.

Servers and the dealer bind only TLS ports that require a client certificate from S0's or S1's CA,
so a plaintext client, a client without a certificate, or one with a certificate from another CA fails
the handshake before any call runs; ``peer_party`` then admits the caller's name only if the CA that
certifies that name towards this party issued it (``certs.Identity.admits``). A client trusts, per
peer, only the CA that certifies the peer (S0's CA for S0, S1's for S1) *and* requires the certificate
to carry the peer's DNS name (``grpc.ssl_target_name_override`` on gRPC, ``server_hostname`` on the bulk
lane, also sent as SNI, so the dealer shows each organisation the certificate that organisation's CA
issued): a worker takes its share key only from S0 and sends its masked update only to S1, whatever an
address says, and no single CA holder can stand in for both servers.
"""

from __future__ import annotations

import functools
import os
import ssl
from contextlib import contextmanager
from typing import Iterator

import grpc

from ..pki.certs import Identity, common_name


def peer_party(cert_pem: bytes | None, identity: Identity) -> str | None:
    """The party on the other end of a mutually authenticated session: the CN of its verified certificate
    ``cert_pem`` if the CA that certifies that name towards ``identity`` issued it, else None (a CA that
    certifies a name for one server only is not trusted for it at the other)."""
    if not cert_pem:
        return None
    cn = _common_name(cert_pem)
    return cn if cn is not None and identity.admits(cn, cert_pem) else None


@functools.lru_cache(maxsize=4096)
def _common_name(cert_pem: bytes) -> str | None:
    """The certificate's CN, or None without a single one (cached: every call of a caller shows the same one)."""
    try:
        return common_name(cert_pem)
    except ValueError:
        return None


# gRPC

def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS server credentials that demand and verify a client certificate from either CA (each of our
    certificates offered, chosen by the client's SNI)."""
    return grpc.ssl_server_credentials(identity.key_cert_pairs(), root_certificates=identity.trusted_roots(),
                                       require_client_auth=True)


def channel_credentials(identity: Identity, peer: str) -> grpc.ChannelCredentials:
    """TLS client credentials towards ``peer``: show the certificate ``peer`` trusts for us, trust only
    the CA that certifies ``peer``."""
    return grpc.ssl_channel_credentials(root_certificates=identity.roots_for(peer), private_key=identity.key_pem,
                                        certificate_chain=identity.cert_for(peer))


# plain TLS sockets (the bulk lane); the certificate and key go through an in-memory file: Python's ssl reads
# them from a path

@contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("secrobust-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tls.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
            fh.write(data)
        yield path


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with _pem_file(cert_pem + b"\n" + key_pem) as path:
        ctx.load_cert_chain(path)


def server_context(identity: Identity) -> ssl.SSLContext:
    """Demand a client certificate from either CA; ``peer_party`` then applies the per-name CA rule."""
    pairs = identity.key_cert_pairs()
    if len(pairs) != 1:
        raise ValueError(f"{identity.party} holds {len(pairs)} certificates; a bulk lane serves one (S0 or S1)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    key, cert = pairs[0]
    _load_chain(ctx, cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=identity.trusted_roots().decode())
    return ctx


def client_context(identity: Identity, peer: str) -> ssl.SSLContext:
    """Show ``peer`` the certificate its CA issued us; trust only the CA that certifies ``peer``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=identity.roots_for(peer).decode())
    _load_chain(ctx, identity.cert_for(peer), identity.key_pem)
    return ctx


def socket_party(sock: ssl.SSLSocket, identity: Identity) -> str | None:
    """``peer_party`` of a plain TLS socket's peer."""
    der = sock.getpeercert(binary_form=True)
    return peer_party(ssl.DER_cert_to_PEM_cert(der).encode() if der else None, identity)
