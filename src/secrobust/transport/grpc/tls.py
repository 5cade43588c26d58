"""gRPC's side of mutual TLS: channel and server options, a channel to a peer, the caller of a call.

The policy (which certificate to show, which CA to trust per peer, which caller name to admit) is
``transport.tls``, shared with the bulk lane.
"""

from __future__ import annotations

import grpc

from ...pki.certs import Identity
from ..tls import channel_credentials, peer_party

CHUNK_BYTES = 1 << 20
MAX_GRPC_MESSAGE = 8 << 20

_COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


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


def caller_party(context: grpc.ServicerContext, identity: Identity) -> str | None:
    """``transport.tls.peer_party`` of the caller of a gRPC call (None when the call is not mutually
    authenticated)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return peer_party(pems[0], identity) if len(pems) == 1 else None
