"""The bulk lane (raw mutual-TLS sockets beside gRPC): the Endpoint's checks in the Endpoint's order,
refusals before the payload is sent, bit-exact delivery, and a connection that stays usable after a
refusal."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Iterator

import numpy as np
import pytest

from secrobust.protocol.messages import Message
from secrobust.transport.grpc import PartyUnreachable, RemoteRejected
from secrobust.transport.lane import SEND, BulkClient, BulkServer, _recv_frame, _send_frame

from .conftest import identity


@pytest.fixture()
def lane(endpoint) -> Iterator[tuple[BulkServer, str]]:
    ep, handler, _ = endpoint
    server = BulkServer(ep, "127.0.0.1:0")
    port = server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop()


def _client(cert_dir, party: str, address: str) -> BulkClient:
    return BulkClient(identity(cert_dir, party), "S0", address, connect_timeout=1.0)


def _msg(sender: str = "S1", round_id: int = 1, d: int = 300_000, **fields) -> Message:
    e = np.random.default_rng(d).integers(0, 2**64, size=d, dtype=np.uint64)
    return Message("masked-open", round_id, sender, "S0", {"worker": 0, **fields}, {"e": e})


def test_a_large_message_arrives_bit_exact_with_the_callers_certificate_name(cert_dir, endpoint, lane):
    _, handler, _ = endpoint
    client = _client(cert_dir, "S1", lane[1])
    try:
        msg = _msg()
        client.send(msg)
        client.send(_msg(d=5))                     # the connection is kept and reused
    finally:
        client.close()
    got = handler.received[0]
    assert got.sender == "S1" and np.array_equal(got.arrays["e"], msg.arrays["e"])
    assert len(handler.received) == 2


def test_fetch_returns_the_handlers_message(cert_dir, endpoint, lane):
    client = _client(cert_dir, "worker:0", lane[1])
    try:
        client.send(_msg(sender="worker:0"))
        got = client.fetch(1, "masked-open", wait_s=1.0)
        assert got.recipient == "worker:0" and got.arrays["e"].shape == (300_000,)
        with pytest.raises(RemoteRejected) as info:
            client.fetch(9, "masked-open", wait_s=0.0)
        assert info.value.code == "not-found"
    finally:
        client.close()


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(rogue_cert_dir, lane):
    client = _client(rogue_cert_dir, "S1", lane[1])
    try:
        with pytest.raises(PartyUnreachable):
            client.send(_msg())
    finally:
        client.close()


@pytest.mark.parametrize("party,code", [("operator:S0", "unknown-party"), ("worker:7", "unknown-party")])
def test_a_party_the_handler_does_not_admit_is_refused(cert_dir, lane, party, code):
    client = _client(cert_dir, party, lane[1])
    try:
        with pytest.raises(RemoteRejected) as info:
            client.send(_msg(sender=party))
        assert info.value.code == code
    finally:
        client.close()


def test_refusals_come_before_the_payload_and_leave_the_connection_usable(cert_dir, endpoint, lane):
    _, handler, _ = endpoint
    client = _client(cert_dir, "S1", lane[1])
    try:
        for bad, code in ((_msg(sender="worker:0"), "sender-mismatch"), (_msg(round_id=2), "wrong-round")):
            with pytest.raises(RemoteRejected) as info:
                client.send(bad)
            assert info.value.code == code
        handler.limit = 1000
        with pytest.raises(RemoteRejected) as info:
            client.send(_msg())
        assert info.value.code == "too-large"
        handler.limit = 1 << 31
        assert handler.received == []
        mid = os.urandom(16)
        client.send(_msg(d=7), message_id=mid)
        with pytest.raises(RemoteRejected) as info:
            client.send(_msg(d=7), message_id=mid)
        assert info.value.code == "replay"
        assert len(handler.received) == 1 and len(client._idle) == 1   # one connection served all of it
    finally:
        client.close()


def _closed(sock) -> bool:
    """The server ended the connection (cleanly, or by dropping the TCP connection under TLS)."""
    import ssl

    sock.settimeout(10.0)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False                                    # still open: not what the server should do
    except OSError:                                     # TLS EOF, reset, or the TLS layer's own error on close
        return True


def test_garbage_after_the_handshake_gets_a_refusal_and_a_closed_connection(cert_dir, lane):
    client = _client(cert_dir, "S1", lane[1])
    try:
        with client._connection() as sock:
            sock.sendall(b"X")
            assert json.loads(_recv_frame(sock))["code"] == "malformed-stream"
            assert _closed(sock)
    finally:
        client._idle.clear()
    client = _client(cert_dir, "S1", lane[1])
    try:
        with client._connection() as sock:
            sock.sendall(SEND + (100_000).to_bytes(4, "big"))     # announces a header above the limit
            # (only the length: the server refuses and closes before any body, which would race the close)
            assert json.loads(_recv_frame(sock))["code"] == "too-large"
            assert _closed(sock)
    finally:
        client._idle.clear()


def test_a_plaintext_client_gets_nothing(lane):
    host, port = lane[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"S\x00\x00\x00\x04abcd")
        raw.settimeout(5)
        try:
            data = raw.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b""
    assert b"abcd" not in data and not data.startswith(b"{")


@pytest.mark.parametrize("bulk", [True, False])
def test_a_deployment_gives_the_same_round_with_or_without_the_bulk_lane(tmp_path, bulk):
    from secrobust.deploy.local import LocalDeployment, LocalOptions

    from .helpers import assert_same_result, log_records, oracle

    x = np.random.default_rng(3).normal(size=(5, 300_000)) * 0.05
    with LocalDeployment(5, tmp_path, LocalOptions(bulk=bulk, share_window_s=20.0)) as dep:
        _, want = oracle(dep, x, "krum", 1)
        got = dep.aggregate(x, "krum", 1)
        lanes = {(r.get("phase"), r.get("lane")) for name in ("S0", "S1") for r in log_records(dep, name)
                 if r.get("event") in ("received", "served")}
    assert_same_result(got, want)
    used = {phase for phase, lane in lanes if lane == "bulk"}
    if bulk:
        assert {"share-masked", "masked-open", "aggregate-share"} <= used   # uploads, rows of E, downloads
    else:
        assert not used


def test_a_lane_that_cannot_be_opened_says_so_and_nothing_was_sent(cert_dir, lane):
    from secrobust.transport.lane import LaneUnavailable

    server, address = lane
    server.stop()
    client = _client(cert_dir, "S1", address)
    try:
        with pytest.raises(LaneUnavailable):
            client.send(_msg(d=5))
    finally:
        client.close()


def test_a_worker_falls_back_to_grpc_when_the_lane_cannot_be_opened():
    from secrobust.deploy.worker import LANE_KINDS
    from secrobust.protocol import messages as M
    from secrobust.transport.lane import LaneUnavailable
    from secrobust.transport.peer import Peer

    sent, tried = [], []

    class Closed:
        peer, log = "S1", __import__("logging").getLogger("test")

        def send(self, msg):
            tried.append(msg)
            raise LaneUnavailable("S1", "127.0.0.1:1", "bulk lane: refused")

    class Grpc:
        def send(self, msg):
            sent.append(msg)

    msg = Message(M.SHARE_MASKED, 1, "worker:0", "S1", {"worker": 0}, {"x1": np.arange(3, dtype=np.uint64)})
    Peer(Grpc(), Closed(), bulk=LANE_KINDS).send(msg)     # the worker's S1 as WorkerRuntime holds it
    assert tried == [msg] and sent == [msg]


def test_a_sender_that_trickles_its_payload_is_cut_off(cert_dir, endpoint, lane, monkeypatch):
    import time as _time

    from secrobust.transport import lane as bulk
    from secrobust.transport.grpc import pace, secrobust_pb2 as pb

    monkeypatch.setattr(pace, "PAYLOAD_GRACE_S", 0.5)
    monkeypatch.setattr(pace, "MIN_RATE", 1e9)
    _, handler, _ = endpoint
    client = _client(cert_dir, "S1", lane[1])
    msg = _msg(d=1000)
    data = msg.to_bytes()
    env = bulk.bulk_envelope(msg, data)
    try:
        with client._connection() as sock:
            _send_frame(sock, env.SerializeToString(), SEND)
            assert json.loads(_recv_frame(sock)) == {"go": True}
            sock.sendall(data[:10])                          # then nothing: an upload slot held hostage
            started = _time.monotonic()
            assert _closed(sock)                             # the server gives up at its deadline
            assert _time.monotonic() - started < 10
    finally:
        client._idle.clear()
    assert handler.received == []


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) << 10 for line in fh if line.startswith("VmRSS:"))


def _envelope(total: int, sender: str = "S1"):
    from secrobust.transport.grpc import secrobust_pb2 as pb
    from secrobust.transport.grpc.tls import CHUNK_BYTES

    return pb.Envelope(version=1, round_id=1, sender=sender, recipient="S0", phase="masked-open", seq=1,
                       message_id=os.urandom(16), total_bytes=total, chunk_count=-(-total // CHUNK_BYTES),
                       sha256=bytes(32))


ANNOUNCED = 256 << 20


def test_a_payload_announced_on_the_bulk_lane_commits_no_memory_until_its_bytes_arrive(cert_dir, endpoint, lane):
    """A stalled sender cannot hold memory: the receive buffer's pages are committed as bytes arrive."""
    client = _client(cert_dir, "S1", lane[1])
    try:
        with client._connection() as sock:
            before = _rss()
            _send_frame(sock, _envelope(ANNOUNCED).SerializeToString(), SEND)
            assert json.loads(_recv_frame(sock)) == {"go": True}
            time.sleep(0.5)
            grown = _rss() - before
            sock.close()
    finally:
        client._idle.clear()
    assert grown < ANNOUNCED // 4, f"{grown >> 20} MiB committed for an announced {ANNOUNCED >> 20} MiB"


def test_a_payload_announced_on_grpc_commits_no_memory_until_its_bytes_arrive(endpoint, client_for):
    from secrobust.transport.grpc import secrobust_pb2 as pb
    from secrobust.transport.grpc.tls import CHUNK_BYTES

    client = client_for("S1")
    ep, handler, _ = endpoint
    started, hold = threading.Event(), threading.Event()
    sizes: list[int] = []

    def stream():
        yield pb.Chunk(envelope=_envelope(ANNOUNCED), index=0, data=bytes(CHUNK_BYTES))
        started.set()
        hold.wait(30.0)

    def attempt(channel):
        call = channel.stream_unary("/secrobust.v1.Party/Send", request_serializer=pb.Chunk.SerializeToString,
                                    response_deserializer=pb.Ack.FromString)
        return call(stream(), timeout=60.0)

    before = _rss()
    sending = threading.Thread(target=lambda: pytest.raises(Exception, client._call, attempt), daemon=True)
    sending.start()
    try:
        assert started.wait(10.0)
        time.sleep(0.5)
        sizes.append(_rss() - before)
    finally:
        hold.set()
        sending.join(30.0)
    assert sizes[0] < ANNOUNCED // 4, f"{sizes[0] >> 20} MiB committed for an announced {ANNOUNCED >> 20} MiB"
    assert handler.received == []


def test_a_slow_but_steady_upload_gets_in_and_a_trickle_is_cut_after_the_grace(cert_dir, endpoint, lane):
    """The pace a receiver asks (here 2 s of grace, then 200 kB/s): a sender that pauses within the grace
    and then keeps about 3 times the floor finishes, well after the grace; one that sends 5 bytes a second
    after its header is cut off soon after the grace, and nothing of it is taken."""
    from secrobust.transport import lane as bulk
    from secrobust.transport.grpc.pace import Pace

    _, handler, _ = endpoint
    handler.upload_pace = lambda env: Pace(2.0, 2e5)
    client = _client(cert_dir, "S1", lane[1])
    msg = _msg(d=250_000)                                # 2 MB: 10 s at the floor
    data = msg.to_bytes()
    try:
        with client._connection() as sock:
            _send_frame(sock, bulk.bulk_envelope(msg, data).SerializeToString(), SEND)
            assert json.loads(_recv_frame(sock)) == {"go": True}
            started = time.monotonic()
            time.sleep(0.5)
            for i in range(0, len(data), 32 << 10):
                sock.sendall(data[i:i + (32 << 10)])
                time.sleep(0.05)                         # 640 kB/s at most
            assert json.loads(_recv_frame(sock)) == {"ok": True}
            assert time.monotonic() - started > 3.0      # well past the grace: 0.5 s + 62 sleeps of 0.05 s at least
        assert len(handler.received) == 1 and np.array_equal(handler.received[0].arrays["e"], msg.arrays["e"])
        with client._connection() as sock:
            _send_frame(sock, bulk.bulk_envelope(msg, data).SerializeToString(), SEND)
            assert json.loads(_recv_frame(sock)) == {"go": True}
            started = time.monotonic()
            cut = False
            for b in data[:100]:
                try:
                    sock.send(bytes([b]))
                    sock.settimeout(0.2)
                    if sock.recv(1) == b"":
                        cut = True
                        break
                except socket.timeout:
                    continue
                except OSError:
                    cut = True
                    break
            assert cut and time.monotonic() - started < 15.0
    finally:
        client._idle.clear()
        client.close()
    assert len(handler.received) == 1
