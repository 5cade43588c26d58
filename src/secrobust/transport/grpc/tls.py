"""Mutual-TLS credentials and channel options for every secrobust connection.

Servers and the dealer bind only a TLS port that requires a client certificate from S0's or S1's CA,
so a plaintext client, a client without a certificate, or one with a certificate from another CA fails
the handshake before any RPC runs; ``peer_party`` then admits the caller's name only if the CA that
certifies that name towards this party issued it (``certs.Identity.admits``). A client trusts, per
peer, only the CA that certifies the peer (S0's CA for S0, S1's for S1) *and* requires the certificate
to carry the peer's DNS name (``grpc.ssl_target_name_override``, also sent as SNI, so the dealer shows
each organisation the certificate that organisation's CA issued): a worker takes its share key only
from S0 and sends its masked update only to S1, whatever an address says, and no single CA holder can
stand in for both servers.
"""

from __future__ import annotations

import grpc

from ...pki.certs import Identity

CHUNK_BYTES = 1 << 20
MAX_GRPC_MESSAGE = 8 << 20

_COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


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


def server_options(stream_window: int | None = None) -> list[tuple[str, int]]:
    """Options for a party's gRPC server (SO_REUSEPORT off, so two parties never share a port).

    ``stream_window``: a fixed HTTP/2 receive window per stream, in bytes, instead of gRPC's bandwidth-delay
    probing (which grows the window of every stream to several MB on a fast link). A party that takes
    large messages from many clients at once (S1: n uploads of 8d bytes) sets it, so the data gRPC reads
    ahead for streams it is not consuming yet stays at one window each; a stream then moves at most one
    window per round trip (1 MiB: 100 MB/s at 10 ms)."""
    out: list[tuple[str, int]] = [*_COMMON_OPTIONS, ("grpc.so_reuseport", 0),
                                  ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
    if stream_window is not None:
        out += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", int(stream_window))]
    return out


def channel_options(identity: Identity, expected_party: str) -> list[tuple[str, int | str]]:
    """Options for a channel to ``expected_party``: the server certificate must carry its DNS name."""
    return [*_COMMON_OPTIONS, ("grpc.ssl_target_name_override", identity.target_for(expected_party)),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000), ("grpc.enable_retries", 0)]


def secure_channel(address: str, identity: Identity, expected_party: str) -> grpc.Channel:
    """A mutual-TLS channel from ``identity`` to the party ``expected_party`` at ``address``."""
    return grpc.secure_channel(address, channel_credentials(identity, expected_party),
                               options=channel_options(identity, expected_party))


def peer_party(context: grpc.ServicerContext, identity: Identity) -> str | None:
    """The caller's party id: the CN of its verified certificate if the CA that certifies that name
    towards ``identity`` issued it, else None (a CA that certifies a name for one server only is not
    trusted for it at the other)."""
    cn = peer_common_name(context)
    pems = context.auth_context().get("x509_pem_cert") or []
    if cn is None or len(pems) != 1 or not identity.admits(cn, pems[0]):
        return None
    return cn


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the caller's verified certificate, or None when the call is not mutually authenticated."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        return None
    try:
        return names[0].decode("ascii")
    except UnicodeDecodeError:
        return None
