"""Upload slots under attack (issue 18, point 3), each written as the attack first.

S1 takes worker shares through a bounded number of upload slots. Worker certificates that take slots and
then send nothing, or trickle their bytes, or open many connections, must not keep the honest workers'
shares out of the round within its share window: there are more slots than any k < n/2 certificates can
hold (one upload each), a payload must keep a minimum pace from its first byte after a short grace, and a
worker whose upload took a slot and ended without a share is out of that round (``dropped``).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.pki.certs import worker_party
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message
from secrobust.transport.grpc import RemoteRejected, wire
from secrobust.transport.grpc import secrobust_pb2 as pb
from secrobust.transport.lane import (
    CONNECTIONS_PER_WORKER,
    SEND,
    LaneUnavailable,
    _recv_frame,
    _send_frame,
    bulk_envelope,
)

from .helpers import (
    Background,
    FakeWorker,
    assert_same_result,
    in_process,
    refusal_after_the_call_ends,
    worker_lane,
)

N = 17
STALLERS = tuple(range(9, 17))
"""Eight worker certificates (as many as S1 had upload slots), fewer than n/2."""
HONEST = tuple(range(9))
D = 2_000
WINDOW = 25.0
"""Below the 30 s a stalled slot was held before the fix; the round must now end long before it, once the
stallers are cut off."""
TRICKLE_WINDOW = 60.0
"""The trickle test's window: the retry of the dropped staller must find the intake still open, which on a
loaded machine can take longer than 25 s; the round still ends as soon as both are dropped."""


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(N, tmp_path_factory.mktemp("dep"),
                        LocalOptions(share_window_s=WINDOW, peer_timeout_s=20.0, connect_timeout_s=2.0,
                                     workers_per_process=N))
    with d:
        yield d


def _updates(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=D) + 0.2 * rng.normal(size=(N, D))) * 0.1



def _announce(sock, round_id: int, wid: int, d: int = D) -> tuple[dict, bytes]:
    """Send the header of a masked share (no key needed: zeros); returns S1's verdict and the payload."""
    msg = Message(M.SHARE_MASKED, round_id, worker_party(wid), "S1", {"worker": wid},
                  {"x1": np.zeros(d, dtype=np.uint64)})
    data = msg.to_bytes()
    _send_frame(sock, bulk_envelope(msg, data).SerializeToString(), SEND)
    return json.loads(_recv_frame(sock)), data


def _closed(sock, within: float) -> bool:
    """S1 ended the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def _report(dep: LocalDeployment, round_id: int) -> dict:
    return dep.operator.clients["S1"].control("report", round_id, {"wait_s": 60.0}, timeout=90.0)


def test_eight_stalled_bulk_uploads_keep_no_honest_share_out(dep):
    """The attack: 8 worker certificates each send a share header on the bulk lane, take "go" (a slot) and
    send nothing. Then the honest workers upload. Every honest share gets in, the stallers are cut off
    after the grace and dropped, and the round ends without waiting out its window."""
    x = _updates(1)
    round_id = dep.operator.next_round_id()
    want = in_process(round_id, x, "krum", 2, drop={w: "both" for w in STALLERS})
    honest = {w: FakeWorker(dep, w) for w in HONEST}
    lanes = [worker_lane(dep, w) for w in STALLERS]
    try:
        run = Background(dep.aggregate, x, "krum", 2, absent=range(N), share_window_s=WINDOW)
        info = honest[0].wait_open()
        assert info["round_id"] == round_id
        socks = [lane._connect() for lane in lanes]
        for w, sock in zip(STALLERS, socks):
            assert _announce(sock, round_id, w)[0] == {"go": True}
        for w in HONEST:
            honest[w].s1.send(honest[w].share(round_id, x[w]), timeout=WINDOW + 30.0)
        assert all(_closed(sock, WINDOW) for sock in socks)
        got = run.result()
        rep = _report(dep, round_id)
    finally:
        for lane in lanes:
            lane.close()
        for fake in honest.values():
            fake.close()
    assert_same_result(got, want, bytes_too=False)
    assert got.participants == HONEST
    assert set(rep["dropped"]) == {str(w) for w in STALLERS}
    assert rep["seconds"]["share"] < WINDOW / 2        # closed once every worker was in or dropped


def test_a_trickled_bulk_upload_and_a_stalled_grpc_upload_are_cut_and_dropped(dep):
    """One worker sends the envelope of its share on plain gRPC and then nothing; another sends its header on
    the bulk lane and then 1 byte a second. Each is cut after the grace and dropped (the first, tried again
    while the intake is still open for the second, is refused), and the other workers' round completes
    without waiting out its window."""
    x = _updates(2)
    trickler, staller = 3, 4
    lane = worker_lane(dep, trickler)
    fake = FakeWorker(dep, staller)
    stop = threading.Event()
    try:
        run = Background(dep.aggregate, x, "krum", 2, absent=[trickler, staller], share_window_s=TRICKLE_WINDOW)
        round_id = fake.wait_open()["round_id"]
        out = wire.encode(fake.share(round_id, x[staller]))

        def stalled():
            chunks = wire.chunks(out)
            yield next(chunks)
            stop.wait(TRICKLE_WINDOW + 30.0)

        def attempt(channel):
            call = channel.stream_unary("/secrobust.v1.Party/Send", request_serializer=pb.Chunk.SerializeToString,
                                        response_deserializer=pb.Ack.FromString)
            return call(stalled(), timeout=TRICKLE_WINDOW + 30.0)

        started = time.monotonic()
        with pytest.raises(Exception):
            fake.s1._call(attempt)                        # cut by S1, long before the client's own timeout
        assert time.monotonic() - started < TRICKLE_WINDOW
        again = refusal_after_the_call_ends(lambda: fake.s1.send(    # the trickler has not answered: intake open
            Message(M.SHARE_MASKED, round_id, worker_party(staller), "S1", {"worker": staller},
                    {"x1": np.zeros(D, dtype=np.uint64)})), timeout=TRICKLE_WINDOW / 2)
        # refused as dropped once S1's handler has let go of the cut call; on a loaded machine that can take
        # longer than the wait, and the retry is then refused as a duplicate: refused either way, and the
        # report below shows the worker dropped
        assert (again.code == "out-of-phase" and "dropped" in str(again)) or again.code == "duplicate", again

        sock = lane._connect()
        verdict, data = _announce(sock, round_id, trickler)
        assert verdict == {"go": True}

        def trickle() -> None:
            for b in data:
                if stop.wait(1.0):
                    return
                try:
                    sock.send(bytes([b]))
                except OSError:
                    return
        Background(trickle)
        assert _closed(sock, TRICKLE_WINDOW)
        got = run.result()
        rep = _report(dep, round_id)
    finally:
        stop.set()
        lane.close()
        fake.close()
    # the staller's share fits one chunk: on a loaded machine S1 can take it whole a moment before the pace
    # cuts the still-open stream (seen once in 10 loaded runs); it then took part, and was not dropped
    dropped = set(rep["dropped"])
    assert str(trickler) in dropped and dropped <= {str(trickler), str(staller)}
    assert got.participants == tuple(w for w in range(N) if w != trickler and str(w) not in dropped)
    assert rep["seconds"]["share"] < TRICKLE_WINDOW                # closed once both were in or dropped


def test_many_connections_under_one_certificate_hold_one_upload_at_most(dep):
    """One worker certificate opens connection after connection: the lane admits 2, the worker has one
    share in flight on either lane, and when that upload stalls the worker is dropped; the round completes."""
    x = _updates(3)
    greedy = 5
    lane = worker_lane(dep, greedy)
    fake = FakeWorker(dep, greedy)
    try:
        run = Background(dep.aggregate, x, "krum", 2, absent=[greedy], share_window_s=WINDOW)
        round_id = fake.wait_open()["round_id"]
        socks = []
        for _ in range(6):
            try:
                socks.append(lane._connect())
            except LaneUnavailable as exc:
                assert "bulk connections" in str(exc)
        # the worker's own process may keep a connection from an earlier round: it counts too
        assert 1 <= len(socks) <= CONNECTIONS_PER_WORKER
        assert _announce(socks[0], round_id, greedy)[0] == {"go": True}
        for sock in socks[1:]:
            assert _announce(sock, round_id, greedy)[0]["code"] == "duplicate"
        with pytest.raises(RemoteRejected) as info:
            fake.s1.send(Message(M.SHARE_MASKED, round_id, worker_party(greedy), "S1", {"worker": greedy},
                                 {"x1": np.zeros(D, dtype=np.uint64)}))
        assert info.value.code == "duplicate"
        assert _closed(socks[0], WINDOW)
        got = run.result()
        rep = _report(dep, round_id)
    finally:
        lane.close()
        fake.close()
    assert got.participants == tuple(w for w in range(N) if w != greedy)
    assert rep["dropped"].keys() == {str(greedy)}
