"""Mutual-TLS credentials and channel options for every secrobust connection.

Servers bind only a TLS port that requires a client certificate from the deployment CA, so a
plaintext client, a client without a certificate, or one with a certificate from another CA fails
the handshake before any RPC runs. Clients verify the server's certificate against the same CA
*and* require it to name the expected party (``grpc.ssl_target_name_override`` set to the party id,
which is a DNS subject alternative name only in that party's certificate): a worker takes its share
key only from S0 and sends its masked update only to S1, whatever an address says.
"""

from __future__ import annotations

import grpc

from ...certs import Identity, tls_name

CHUNK_BYTES = 1 << 20
MAX_GRPC_MESSAGE = 8 << 20

_COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS server credentials that demand and verify a client certificate from the CA."""
    return grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)], root_certificates=identity.ca_pem,
                                       require_client_auth=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """TLS client credentials: present our certificate, trust only the deployment CA."""
    return grpc.ssl_channel_credentials(root_certificates=identity.ca_pem, private_key=identity.key_pem,
                                        certificate_chain=identity.cert_pem)


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


def channel_options(expected_party: str) -> list[tuple[str, int | str]]:
    """Options for a channel to ``expected_party``: the server certificate must carry its TLS name."""
    return [*_COMMON_OPTIONS, ("grpc.ssl_target_name_override", tls_name(expected_party)),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000), ("grpc.enable_retries", 0)]


def secure_channel(address: str, identity: Identity, expected_party: str) -> grpc.Channel:
    """A mutual-TLS channel from ``identity`` to the party ``expected_party`` at ``address``."""
    return grpc.secure_channel(address, channel_credentials(identity), options=channel_options(expected_party))


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
