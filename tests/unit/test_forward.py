"""S1's forwarded rows of E (``deploy.server.forward``), without a network: the stream is the row message S1
would send whole, byte for byte; it is held before its last piece until S1 takes the share; a share cut or
refused leaves the stream cut (so S0, which takes only whole messages, holds nothing); a share shaped for
another worker is not forwarded; and a forward that fails after the share was taken is replaced by the row
sent whole, once."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from secrobust.deploy.server import forward
from secrobust.deploy.server.forward import Cancelled, RowForward
from secrobust.deploy.server.run import Streamed
from secrobust.deploy.server.s1 import S1Steps
from secrobust.deploy.server.sync import Monitor
from secrobust.errors import MalformedMessage
from secrobust.gates.dealer import TripleSeeds
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.protocol import streaming
from secrobust.protocol.nodes import DealerNode, ServerNode
from secrobust.protocol.offline import request_triple
from secrobust.protocol.server import RoundPlan
from secrobust.protocol.worker import share_key, share_update

D = 5_000
N = 4


class FakeRound:
    def __init__(self, plan: RoundPlan) -> None:
        self.plan, self.round_id = plan, plan.round_id
        self.streamed = Streamed(1, plan)
        self.received: set[int] = set()

    def check_alive(self) -> None:
        pass


class FakeLane:
    """``send_stream`` as the bulk lane calls it: the header, then every piece, then (unless told to fail) done."""

    def __init__(self, fail_after: bool = False) -> None:
        self.data = bytearray()
        self.header: bytes | None = None
        self.error: BaseException | None = None
        self.fail_after = fail_after
        self.started = threading.Event()

    def send_stream(self, msg: M.Message, pieces) -> None:
        self.header = msg._encode()[0]
        self.started.set()
        try:
            for piece in pieces:
                self.data += bytes(piece)
        except BaseException as exc:
            self.error = exc
            raise
        if self.fail_after:
            raise ConnectionError("the link broke after the last byte")


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(5)
    x = ring.encode(rng.normal(size=(N, D)) * 0.3, 20)
    v = ring.encode(rng.normal(size=D) * 0.1, 20)
    plan = RoundPlan(3, tuple(range(10, 10 + N)), D, 20, ("distances",), v, "t-fwd", 8 * 3 * N, False)
    s0, s1 = ServerNode(0), ServerNode(1)
    s0.start_round(plan)
    s1.start_round(plan)
    m0, m1 = DealerNode().handle(request_triple(3, plan.triple_spec()), TripleSeeds(*(bytes([k]) * 32 for k in (7, 8, 9))))
    s0.receive_triple(m0)
    s1.receive_triple(m1)
    shares = {}
    for i, w in enumerate(plan.worker_ids):
        key = share_key(s0.share_key_message(w), 3, w, D)
        shares[w] = share_update(3, w, x[i], key)
    return plan, s1.current.triple, shares


def _arrive(f: RowForward, data: bytes, buf: np.ndarray, upto: int, step: int = 3_001) -> None:
    """The first ``upto`` bytes land in ``buf`` in reads of ``step`` bytes, as the lane hands them over."""
    got = 0
    while got < upto:
        nxt = min(upto, got + step)
        buf[got:nxt] = np.frombuffer(data[got:nxt], dtype=np.uint8)
        got = nxt
        f.progress(got)


def _forward(setup, w: int, lane: FakeLane) -> tuple[RowForward, FakeRound, bytes, np.ndarray]:
    plan, triple, shares = setup
    rnd = FakeRound(plan)
    data = shares[w].to_bytes()
    buf = np.empty(len(data), dtype=np.uint8)
    f = RowForward(Monitor(), rnd, w, buf, triple, lane.send_stream)
    rnd.streamed.forwards[w] = f
    return f, rnd, data, buf


def _whole_row(setup, w: int) -> bytes:
    plan, triple, shares = setup
    e = streaming.opening_row(shares[w].arrays["x1"], triple, plan.worker_ids.index(w), plan.center)
    return streaming.opening_message(plan.round_id, plan.open_kind, w, e).to_bytes()


def test_the_stream_is_the_whole_row_message_and_waits_for_the_share_to_be_taken(setup):
    w = 11
    lane = FakeLane()
    f, rnd, data, buf = _forward(setup, w, lane)
    _arrive(f, data, buf, len(data))
    assert lane.started.wait(5.0)
    piece = forward.piece_columns(D)
    f.done.wait(0.3)
    assert not f.done.is_set() and len(lane.data) <= 8 * ((D - 1) // piece * piece)   # the last piece waits
    rnd.received.add(w)
    f.end(True)
    assert f.done.wait(5.0) and f.delivered
    assert lane.header + bytes(lane.data) == _whole_row(setup, w)
    assert rnd.streamed.forwards[w] is f


@pytest.mark.parametrize("upto", ["half", "all"])
def test_a_share_cut_or_refused_cuts_the_stream_and_is_forgotten(setup, upto):
    w = 12
    lane = FakeLane()
    f, rnd, data, buf = _forward(setup, w, lane)
    _arrive(f, data, buf, len(data) // 2 if upto == "half" else len(data))
    assert lane.started.wait(5.0)
    f.end(False)                                        # cut by the pace, or refused for its content
    assert f.done.wait(5.0) and isinstance(f.error, Cancelled) and isinstance(lane.error, Cancelled)
    assert w not in rnd.streamed.forwards               # a retry streams afresh
    assert len(lane.header) + len(lane.data) < len(data)   # never the whole message


def test_a_share_shaped_for_another_worker_is_not_forwarded(setup):
    plan, triple, shares = setup
    lane = FakeLane()
    rnd = FakeRound(plan)
    data = shares[13].to_bytes()                        # worker 13's share, arriving under worker 12's name
    buf = np.empty(len(data), dtype=np.uint8)
    f = RowForward(Monitor(), rnd, 12, buf, triple, lane.send_stream)
    rnd.streamed.forwards[12] = f
    _arrive(f, data, buf, len(data))
    f.end(True)
    assert f.done.is_set() and isinstance(f.error, MalformedMessage) and not lane.started.is_set()
    assert 12 not in rnd.streamed.forwards


def test_a_forward_that_fails_after_the_share_was_taken_is_replaced_by_the_row_sent_whole_once(setup):
    plan, triple, shares = setup
    w = 10
    lane = FakeLane(fail_after=True)
    f, rnd, data, buf = _forward(setup, w, lane)
    _arrive(f, data, buf, len(data))
    st = rnd.streamed
    st.rows[0] = shares[w].arrays["x1"]
    st.order.append(w)
    rnd.received.add(w)
    f.end(True)
    assert f.done.wait(5.0) and isinstance(f.error, ConnectionError)
    sent: list[M.Message] = []
    link = SimpleNamespace(peer_timeout_s=5.0, peer_name="S0", send=lambda r, msg: sent.append(msg))
    steps = S1Steps(f.monitor, SimpleNamespace(current=SimpleNamespace(triple=triple)), link, "S1")  # type: ignore[arg-type]
    assert not steps._forwarded(st, w) and w not in st.forwards   # the row loop sends it whole ...
    st.forwards[w] = f
    steps._await_forwards(rnd)                                    # ... or the final wait does, once
    assert [m.to_bytes() for m in sent] == [_whole_row(setup, w)]


class SlowLane(FakeLane):
    """S0 says "go" only when the test lets it: the stream's first piece is asked for after that."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def send_stream(self, msg: M.Message, pieces) -> None:
        self.go.wait(10.0)
        super().send_stream(msg, pieces)


def test_a_share_cut_before_s0_said_go_sends_no_piece(setup):
    """Nothing is opened ahead of S0's socket: a share cut while the forward waits for S0 leaves no piece sent
    (nor queued), however much of the share had arrived."""
    w = 13
    lane = SlowLane()
    f, rnd, data, buf = _forward(setup, w, lane)
    _arrive(f, data, buf, len(data) - 100)
    f.end(False)
    lane.go.set()
    assert f.done.wait(5.0) and isinstance(f.error, Cancelled)
    assert lane.started.is_set() and not lane.data and f.opened == 0


def _steps(monitor: Monitor, lane: object) -> S1Steps:
    link = SimpleNamespace(peer=SimpleNamespace(lane=SimpleNamespace(streams=forward.FORWARD_STREAMS),
                                                send_stream=lane.send_stream),
                           peer_timeout_s=5.0, peer_name="S0")
    return S1Steps(monitor, SimpleNamespace(current=None), link, "S1")  # type: ignore[arg-type]


def _open_round(plan: RoundPlan) -> FakeRound:
    rnd = FakeRound(plan)
    rnd.uses_triple, rnd.intake_open = True, True
    return rnd


def test_a_worker_has_one_forward_a_round_and_forwards_are_counted_across_rounds(setup):
    """A worker whose streamed share was cut or refused gets no second forward that round (its retry's row
    goes whole: one stream per pad), a share whose header is not the expected one does not use up that
    forward, and S1 runs at most ``FORWARD_STREAMS`` forwards, those of earlier rounds included."""
    plan, triple, shares = setup
    monitor, lane = Monitor(), SlowLane()
    steps = _steps(monitor, lane)
    rnd = _open_round(plan)
    data = shares[10].to_bytes()
    with monitor:
        misfit = steps.forward_watch(rnd, 10, np.empty(len(data) + 8, dtype=np.uint8))
    misfit.progress(8)                                   # the announced size is not a share's: not forwarded
    assert misfit.done.is_set() and steps.forwarding == 0 and 10 not in rnd.streamed.forwarded
    with monitor:
        first = steps.forward_watch(rnd, 10, buf := np.empty(len(data), dtype=np.uint8))
    _arrive(first, data, buf, len(data) // 2)
    first.end(False)
    lane.go.set()
    assert first.done.wait(5.0)
    with monitor:
        assert steps.forward_watch(rnd, 10, np.empty(len(data), dtype=np.uint8)) is None
        assert steps.forwarding == 0
    held = []
    for k in range(forward.FORWARD_STREAMS):             # one worker's share in each of many rounds
        with monitor:
            held.append(steps.forward_watch(_open_round(plan), 11, np.empty(len(data), dtype=np.uint8)))
    with monitor:
        assert steps.forwarding == forward.FORWARD_STREAMS
        assert steps.forward_watch(_open_round(plan), 12, np.empty(len(data), dtype=np.uint8)) is None
    held[0].end(False)
    with monitor:
        assert steps.forwarding == forward.FORWARD_STREAMS - 1
        assert steps.forward_watch(_open_round(plan), 12, np.empty(len(data), dtype=np.uint8)) is not None
