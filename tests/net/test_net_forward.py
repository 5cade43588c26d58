"""S1 forwards each worker's row of E to S0 while the worker's share is still arriving (``deploy.server.forward``).

The round is the in-process round, bit for bit and byte for byte, with every row forwarded; and the two ways
a forward can go wrong end with S0 holding nothing of it: a share cut mid-payload (its worker is dropped, the
round goes on without it), and a share that arrives whole and is refused for its content (its worker sends
again, and that share's row is forwarded afresh)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.deploy.server import forward
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message
from secrobust.transport.lane import SEND, _recv_frame, _send_frame, bulk_envelope

from .helpers import Background, FakeWorker, assert_same_result, in_process, log_records, oracle, worker_lane

N = 6
D = 20_000
WINDOW = 30.0
ODD = 5
"""The worker the attack tests drive by hand."""


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(N, tmp_path_factory.mktemp("dep"),
                        LocalOptions(share_window_s=WINDOW, peer_timeout_s=20.0, connect_timeout_s=2.0,
                                     workers_per_process=N))
    with d:
        d.aggregate(_updates(0), "krum", 1)             # a first round: S1 learns S0's lane at its confirmation
        yield d


def _updates(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=D) + 0.2 * rng.normal(size=(N, D))) * 0.1


def _s1_events(dep: LocalDeployment, round_id: int, name: str) -> list[dict]:
    return [r for r in log_records(dep, "S1") if r.get("event") == name and r.get("round") == round_id]


def _streamed(dep: LocalDeployment, round_id: int) -> int:
    """Rows of E S1 sent to S0 as forwards in ``round_id``."""
    return sum(1 for r in _s1_events(dep, round_id, "sent") if r.get("phase") == M.MASKED_OPEN and r.get("streamed"))


def _rows_sent(dep: LocalDeployment, round_id: int) -> int:
    """Rows of E S1 sent to S0 in ``round_id``, forwarded or whole."""
    return sum(1 for r in _s1_events(dep, round_id, "sent") if r.get("phase") == M.MASKED_OPEN)


def _forwarded_workers(dep: LocalDeployment, round_id: int) -> set[int]:
    """Workers whose forward S0 said "go" to (its last is the one delivered unless it was cut)."""
    cut = [r["worker"] for r in _s1_events(dep, round_id, "forward-cut")]
    opened = [r["worker"] for r in _s1_events(dep, round_id, "forward-open")]
    return {w for w in opened if opened.count(w) > cut.count(w)}



def _wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_every_row_is_forwarded_and_the_round_is_the_in_process_one_byte_for_byte(dep):
    assert forward.worth_forwarding(D) and D // forward.piece_columns(D) >= 4
    x = _updates(1)
    round_id, want = oracle(dep, x, "krum", 1)
    got = dep.aggregate(x, "krum", 1)
    assert_same_result(got, want)                       # bytes too: forwarding changes no message or count
    assert _streamed(dep, round_id) == N and _rows_sent(dep, round_id) == N


def test_a_share_cut_mid_payload_leaves_s0_nothing_and_the_round_goes_on_without_it(dep):
    """The attack: worker ODD sends its share's header and half its vector on the bulk lane, then stops. S1
    forwards the pieces that arrived; the pace cuts the upload after its grace, S1 cuts the forward's stream,
    and S0, which takes a row only whole, holds nothing of it (had it taken the row, S0 would abort the round:
    a row of a worker S1 does not list). The round is the in-process one without ODD."""
    x = _updates(2)
    round_id = dep.operator.next_round_id()
    want = in_process(round_id, x, "krum", 1, drop={ODD: "both"})
    fake, lane = FakeWorker(dep, ODD), worker_lane(dep, ODD)
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[ODD], share_window_s=WINDOW)
        assert fake.wait_open()["round_id"] == round_id
        data = fake.share(round_id, x[ODD]).to_bytes()
        sock = lane._connect()
        env = bulk_envelope(Message.from_bytes(data), data)
        _send_frame(sock, env.SerializeToString(), SEND)
        assert json.loads(_recv_frame(sock)) == {"go": True}
        sock.sendall(data[:len(data) // 2])
        sock.settimeout(WINDOW)
        try:
            assert sock.recv(1) == b""                  # cut by S1's pace
        except OSError:
            pass
        got = run.result()
    finally:
        lane.close()
        fake.close()
    assert_same_result(got, want, bytes_too=False)
    cut = _s1_events(dep, round_id, "forward-cut")
    assert [r["worker"] for r in cut] == [ODD] and 0 < cut[0]["opened"] < D   # some of its row was streamed
    assert _rows_sent(dep, round_id) == N - 1


def test_a_share_s1_will_refuse_is_not_forwarded_and_its_retry_is(dep):
    """Worker ODD's first share names another round in its header (the envelope names this one): S1 forwards
    only a share whose first bytes are exactly the header ``share_update`` makes, so nothing of this one
    reaches S0 before S1 refuses it (``envelope-mismatch``). ODD sends again, correctly; that row is forwarded
    and the round is the in-process one with every worker."""
    x = _updates(3)
    round_id = dep.operator.next_round_id()
    want = in_process(round_id, x, "krum", 1)
    fake, lane = FakeWorker(dep, ODD), worker_lane(dep, ODD)
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[ODD], share_window_s=WINDOW)
        assert fake.wait_open()["round_id"] == round_id
        share = fake.share(round_id, x[ODD])
        bad = Message(share.kind, round_id + 1, share.sender, share.recipient, share.fields, share.arrays)
        data = bad.to_bytes()
        env = bulk_envelope(share, data)
        sock = lane._connect()
        _send_frame(sock, env.SerializeToString(), SEND)
        assert json.loads(_recv_frame(sock)) == {"go": True}
        sock.sendall(data)
        assert json.loads(_recv_frame(sock))["code"] == "envelope-mismatch"
        sock.close()
        assert _wait_for(lambda: any(r["worker"] == ODD for r in _s1_events(dep, round_id, "forward-off")), 10.0)
        lane.send(share)
        got = run.result()
    finally:
        lane.close()
        fake.close()
    assert_same_result(got, want, bytes_too=False)
    assert not _s1_events(dep, round_id, "forward-cut")
    opened = [r["worker"] for r in _s1_events(dep, round_id, "forward-open")]
    assert opened.count(ODD) == 1 and _rows_sent(dep, round_id) == N and _streamed(dep, round_id) == N

MANY = 40
"""Enough workers for 21 upload slots at S1 (``upload_slots``): more forwards at once than S0's call gate
allowed any one party (16) before it knew of them."""


def test_as_many_forwards_as_s1_has_upload_slots_are_held_open_at_s0_at_once(tmp_path):
    """The seam between S1's upload slots and S0's caps: 21 workers each send half their share and wait, so S1
    holds 21 forwards open at S0 at once (each a bulk connection, a call, and a row's room); then they finish,
    and the other 19 upload. Every row is forwarded (none refused ``busy`` and resent whole) and the round is
    the in-process one."""
    from secrobust.deploy.server.slots import upload_slots

    held = upload_slots(MANY)
    assert held > 16 and held <= forward.FORWARD_STREAMS
    rng = np.random.default_rng(4)
    x = (rng.normal(size=D) + 0.2 * rng.normal(size=(MANY, D))) * 0.1
    with LocalDeployment(MANY, tmp_path, LocalOptions(share_window_s=60.0, peer_timeout_s=30.0,
                                                      connect_timeout_s=2.0, workers_per_process=MANY)) as many:
        many.aggregate(x, "krum", 1)                    # S1 learns S0's lane at its first confirmation
        round_id, want = oracle(many, x, "krum", 1)
        fakes = {w: FakeWorker(many, w) for w in range(MANY)}
        lanes = {w: worker_lane(many, w) for w in range(MANY)}
        try:
            run = Background(many.aggregate, x, "krum", 1, absent=range(MANY), share_window_s=60.0)
            assert fakes[0].wait_open()["round_id"] == round_id
            socks = {}
            for w in range(held):
                data = fakes[w].share(round_id, x[w]).to_bytes()
                sock = lanes[w]._connect()
                _send_frame(sock, bulk_envelope(Message.from_bytes(data), data).SerializeToString(), SEND)
                assert json.loads(_recv_frame(sock)) == {"go": True}
                sock.sendall(data[:len(data) // 2])
                socks[w] = (sock, data)
            assert _wait_for(lambda: len(_s1_events(many, round_id, "forward-open")) >= held, 20.0)
            for sock, data in socks.values():
                sock.sendall(data[len(data) // 2:])
            for w, (sock, _) in socks.items():
                assert json.loads(_recv_frame(sock)) == {"ok": True}, w
            for w in range(held, MANY):
                lanes[w].send(fakes[w].share(round_id, x[w]))
            got = run.result()
        finally:
            for w in range(MANY):
                lanes[w].close()
                fakes[w].close()
        assert_same_result(got, want, bytes_too=False)
        assert _streamed(many, round_id) == MANY
        assert not _s1_events(many, round_id, "forward-failed")

