"""The gRPC transport against an in-process endpoint: chunked streaming of large arrays, mutual TLS,
and one specific refusal per kind of bad input, after which the endpoint keeps serving."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from secrobust.protocol.messages import SHARE_KEY, SHARE_MASKED, VERSION, Message
from secrobust.transport.grpc import PartyUnreachable, RemoteRejected, wire
from secrobust.transport.grpc import secrobust_pb2 as pb
from secrobust.transport.grpc.tls import CHUNK_BYTES, channel_options

from .conftest import identity


def _msg(round_id: int = 1, sender: str = "worker:0", d: int = 8, **kw) -> Message:
    x = np.arange(d, dtype=np.uint64)
    return Message(kw.pop("kind", SHARE_MASKED), round_id, sender, kw.pop("recipient", "S0"),
                   fields={"worker": 0}, arrays={"x1": x}, **kw)


def _still_serving(client_for) -> None:
    ack = client_for("worker:0").send(_msg())
    assert ack.bytes_received > 0


def _rejected(fn, code: str) -> RemoteRejected:
    with pytest.raises(RemoteRejected) as info:
        fn()
    assert info.value.code == code, info.value
    return info.value


def test_a_1e7_word_array_crosses_in_1mib_chunks_and_arrives_bit_exact(endpoint, client_for):
    _, handler, _ = endpoint
    x = np.random.default_rng(1).integers(0, 2**64, size=10_000_000, dtype=np.uint64)
    out = wire.encode(Message(SHARE_MASKED, 1, "worker:0", "S0", fields={"worker": 0}, arrays={"x1": x}))
    assert out.envelope.chunk_count == -(-len(out.data) // CHUNK_BYTES) > 76
    ack = client_for("worker:0").send_encoded(out)
    assert ack.bytes_received == len(out.data) > 80_000_000
    got = handler.received[-1]
    assert got.arrays["x1"].dtype == np.uint64 and np.array_equal(got.arrays["x1"], x)


def test_fetch_streams_a_large_message_back(endpoint, client_for):
    x = np.arange(3_000_000, dtype=np.uint64)
    c = client_for("worker:0")
    c.send(Message(SHARE_MASKED, 1, "worker:0", "S0", arrays={"x1": x}))
    got = c.fetch(1, SHARE_MASKED, wait_s=1.0)
    assert got.recipient == "worker:0" and np.array_equal(got.arrays["x1"], x)


def test_control_reports_the_authenticated_caller(client_for):
    assert client_for("S1", peer="S0").control("status", 3, {"a": 1}) == {"caller": "S1", "command": "status",
                                                                         "args": {"a": 1}}


def _assert_status_call_unavailable(ch: grpc.Channel) -> None:
    """A Control "status" call on ``ch`` fails at the connection, before any RPC runs."""
    call = ch.unary_unary("/secrobust.v1.Party/Control", request_serializer=pb.ControlRequest.SerializeToString,
                          response_deserializer=pb.ControlReply.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(pb.ControlRequest(version=VERSION, sender="worker:0", command="status"), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_refused(endpoint, client_for):
    with grpc.insecure_channel(endpoint[2]) as ch:
        _assert_status_call_unavailable(ch)
    _still_serving(client_for)


def test_a_tls_client_without_a_certificate_is_refused(endpoint, cert_dir, client_for):
    worker = identity(cert_dir, "worker:0")
    creds = grpc.ssl_channel_credentials(root_certificates=worker.roots_for("S0"))
    with grpc.secure_channel(endpoint[2], creds, options=channel_options(worker, "S0")) as ch:
        _assert_status_call_unavailable(ch)
    _still_serving(client_for)


def test_a_certificate_from_another_ca_is_refused_even_with_a_valid_name(rogue_cert_dir, cert_dir, client_for):
    rogue = identity(rogue_cert_dir, "worker:0")
    from secrobust.pki.certs import Identity
    mixed = Identity("worker:0", rogue.key_pem, rogue.certs, identity(cert_dir, "worker:0").cas)
    from secrobust.transport.grpc import PeerClient
    c = PeerClient(mixed, "S0", client_for("worker:0").address, connect_timeout=1.0)
    try:
        with pytest.raises(PartyUnreachable):
            c.control("status")
    finally:
        c.close()
    _still_serving(client_for)


def test_a_client_does_not_talk_to_a_server_that_is_not_the_one_it_expects(client_for):
    with pytest.raises(PartyUnreachable, match="Hostname Verification|handshake|verif"):
        client_for("worker:0", peer="S1", connect_timeout=1.0).control("status")


def test_a_party_the_endpoint_does_not_admit_is_refused(client_for):
    _rejected(lambda: client_for("worker:7").control("status"), "unknown-party")
    _rejected(lambda: client_for("operator:S0").send(_msg(sender="operator:S0")), "unknown-party")


def test_a_sender_field_that_is_not_the_certificate_is_refused(client_for):
    _rejected(lambda: client_for("worker:1").send_encoded(wire.encode(_msg(sender="worker:0"))), "sender-mismatch")
    _still_serving(client_for)


def test_a_replayed_message_is_refused(endpoint, client_for):
    _, handler, _ = endpoint
    c = client_for("worker:0")
    out = wire.encode(_msg())
    c.send_encoded(out)
    err = _rejected(lambda: c.send_encoded(out), "replay")
    assert out.message_id.hex() in err.reason
    assert len(handler.received) == 1
    _still_serving(client_for)


def test_a_message_for_another_round_is_refused(client_for):
    err = _rejected(lambda: client_for("worker:0").send(_msg(round_id=7)), "wrong-round")
    assert "round 7" in err.reason
    _still_serving(client_for)


def test_a_message_for_another_recipient_is_refused(client_for):
    c = client_for("worker:0")
    _rejected(lambda: c.send_encoded(wire.encode(_msg(recipient="S1"))), "wrong-recipient")


def _raw(env: pb.Envelope, data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    pieces = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    return [pb.Chunk(envelope=env if i == 0 else None, index=i, data=p).SerializeToString()
            for i, p in enumerate(pieces)]


def _env(data: bytes, **kw) -> pb.Envelope:
    base = dict(version=VERSION, round_id=1, sender="worker:0", recipient="S0", phase=SHARE_MASKED, seq=1,
                message_id=np.random.default_rng().bytes(16), total_bytes=len(data),
                chunk_count=max(1, -(-len(data) // CHUNK_BYTES)), sha256=hashlib.sha256(data).digest())
    base.update(kw)
    return pb.Envelope(**base)


def test_bytes_that_are_not_protobuf_are_refused_and_the_server_keeps_serving(client_for):
    c = client_for("worker:0")
    _rejected(lambda: c.send_raw([b"\xff\xff\xff\xff"]), "malformed-protobuf")
    data = _msg().to_bytes()
    _rejected(lambda: c.send_raw([_raw(_env(data), data)[0], b"\x0a\xff"]), "malformed-protobuf")
    _still_serving(client_for)


def test_a_stream_without_envelope_or_with_missing_chunks_is_refused(client_for):
    c = client_for("worker:0")
    data = _msg(d=300_000).to_bytes()
    _rejected(lambda: c.send_raw([pb.Chunk(index=0, data=data[:10]).SerializeToString()]), "malformed-stream")
    _rejected(lambda: c.send_raw(_raw(_env(data), data)[:1]), "malformed-stream")
    chunks = _raw(_env(data), data)
    _rejected(lambda: c.send_raw([chunks[0], chunks[2], chunks[1]]), "malformed-stream")
    _rejected(lambda: c.send_raw(_raw(_env(data, chunk_count=9), data)), "malformed-stream")
    _rejected(lambda: c.send_raw(_raw(_env(data, message_id=b"short"), data)), "malformed-stream")
    _still_serving(client_for)


def test_a_corrupted_payload_fails_the_digest(client_for):
    data = _msg().to_bytes()
    bad = bytearray(data)
    bad[-1] ^= 1
    _rejected(lambda: client_for("worker:0").send_raw(_raw(_env(data), bytes(bad))), "digest")
    _still_serving(client_for)


def test_payload_that_is_not_a_message_is_refused_as_malformed(client_for):
    junk = b"SRB1" + b"\xff" * 40
    err = _rejected(lambda: client_for("worker:0").send_raw(_raw(_env(junk), junk)), "malformed-message")
    assert "header" in err.reason
    _still_serving(client_for)


def test_an_envelope_that_disagrees_with_its_message_is_refused(client_for):
    data = _msg().to_bytes()
    _rejected(lambda: client_for("worker:0").send_raw(_raw(_env(data, phase=SHARE_KEY), data)), "envelope-mismatch")
    _still_serving(client_for)


def test_an_unknown_version_or_phase_is_refused(client_for):
    data = _msg().to_bytes()
    c = client_for("worker:0")
    _rejected(lambda: c.send_raw(_raw(_env(data, version=99), data)), "version")
    _rejected(lambda: c.send_raw(_raw(_env(data, phase="gossip"), data)), "out-of-phase")
    _still_serving(client_for)


def test_a_message_above_the_receivers_limit_is_refused_before_it_is_read(endpoint, client_for):
    endpoint[1].limit = 1000
    err = _rejected(lambda: client_for("worker:0").send(_msg(d=1000)), "too-large")
    assert "limit of 1000" in err.reason
    endpoint[1].limit = 1 << 31
    _still_serving(client_for)


def test_accounting_reads_only_the_keys_asked_for_and_keeps_the_last_ones():
    from secrobust.transport.grpc import Accounting

    acc = Accounting(keep=3)
    acc.add(1, "sent", "S1", 100, 120)
    acc.add(1, "received", "S1", 10, 12)
    acc.add("triple:t", "received", "dealer", 7, 9)
    acc.add(2, "sent", "worker:0", 5, 6)
    one = acc.totals(1)
    assert (one["sent"], one["received"], one["messages_sent"]) == (100, 10, 1) and set(one["by_peer"]) == {"S1"}
    both = acc.totals(1, "triple:t")
    assert both["received"] == 17 and both["by_peer"]["dealer"]["wire_received"] == 9
    assert acc.totals(1, 1)["sent"] == 100                                 # a key counts once
    assert acc.totals()["sent"] == 105
    acc.add(3, "sent", "S0", 1, 1)                                         # a fourth key: the oldest goes
    assert acc.totals(1)["sent"] == 0 and acc.totals(3)["sent"] == 1 and acc.totals("triple:t")["received"] == 7
