"""protocol.streaming: the row-streamed opening gives Gram shares whose sum is Y Y^T and projections whose sum
is that of X, the same bits in any arrival order and any block sizes (dropouts, gram and diag triples, with
and without a center), whether the servers' nodes run it (the in-process round) or a runner drives the
Gram classes itself (the deployment); and the streamed rows refuse what does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from secrobust.circuits import validity
from secrobust.errors import MalformedMessage, RoundAborted, UnexpectedMessage
from secrobust.gates.dealer import TripleSeeds
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.protocol import server, streaming
from secrobust.protocol.nodes import DealerNode, ServerNode
from secrobust.protocol.offline import request_triple
from secrobust.protocol.server import RoundPlan
from secrobust.protocol.worker import share_key, share_update


def _round(n: int, d: int, reveal: tuple[str, ...], center: bool, validity_on: bool, seeds: TripleSeeds):
    """Two servers with their triple (the same seeds each call); returns (s0, s1, plan, x)."""
    rng = np.random.default_rng(4)
    x = ring.encode(rng.normal(size=(n, d)) * 0.3, 20)
    x[0] = rng.integers(0, 2**64, size=d, dtype=np.uint64)     # a worker outside the encoder
    v = ring.encode(rng.normal(size=d) * 0.1, 20) if center else None
    plan = RoundPlan(3, tuple(range(10, 10 + n)), d, 20, reveal, v, "t-stream", 8 * 3 * n, validity_on)
    s0, s1 = ServerNode(0), ServerNode(1)
    s0.start_round(plan)
    s1.start_round(plan)
    m0, m1 = DealerNode().handle(request_triple(3, plan.triple_spec()), seeds)
    s0.receive_triple(m0)
    s1.receive_triple(m1)
    return s0, s1, plan, x


def _share(s0: ServerNode, plan: RoundPlan, x: np.ndarray, i: int) -> M.Message:
    w = plan.worker_ids[i]
    return share_update(3, w, x[i], share_key(s0.share_key_message(w), 3, w, plan.d))


def _seeds(s0: ServerNode, s1: ServerNode, seed: bytes) -> None:
    m1, m0 = s1.validity_seed_message(seed), s0.validity_seed_message(seed[::-1])
    s0.receive_validity_seed(m1)
    s1.receive_validity_seed(m0)


def _by_nodes(s0: ServerNode, s1: ServerNode, plan, x, present, rng, seed: bytes):
    """The in-process round's steps 2-3: rows opened as the shares arrive, S0 taking them at random times."""
    waiting: list[M.Message] = []
    for i in present:
        s1.take_share(_share(s0, plan, x, i))
        waiting += [M.Message.from_bytes(m.to_bytes()) for m in s1.open_rows()]
        s1.add_gram()
        if rng.random() < 0.5:
            s0.take_rows(waiting)
            waiting = []
    s1.agree(None, 1, "")
    s0.agree(s1.participants_message(), 1, "")
    s0.take_rows(waiting)
    if plan.validity:
        _seeds(s0, s1, seed)
        s0.project()
        s1.project()
    s0.finish_opening()
    s1.finish_opening()
    return s0.current, s1.current


def _by_hand(s0: ServerNode, s1: ServerNode, plan, x, present, rng, seed: bytes):
    """The deployment's steps 2-3: its runner keeps the rows and drives the Gram classes, blocks of random size."""
    n, d, kind = len(plan.worker_ids), plan.d, plan.triple_kind
    xs = np.empty((n, d), dtype=np.uint64)
    g1, g0 = streaming.RowGram(n, kind), streaming.ColumnGram(n, kind)
    t0, t1 = s0.current.triple, s1.current.triple
    a0_rows = streaming.s0_rows(t0, np.arange(n))
    pending: list[tuple[int, np.ndarray]] = []
    for k, i in enumerate(present):
        msg = _share(s0, plan, x, i)
        xs[k] = msg.arrays["x1"]
        s1.receive_share(M.Message(msg.kind, msg.round_id, msg.sender, msg.recipient, msg.fields, {"x1": xs[k]}))
        w = plan.worker_ids[i]
        row = M.Message.from_bytes(streaming.opening_message(3, plan.open_kind, w, streaming.opening_row(
            xs[k], t1, i, plan.center)).to_bytes())
        pending.append(streaming.read_opening(row, plan.worker_ids, {w for w, _ in pending}, d))
        if rng.random() < 0.5 or k == len(present) - 1:
            g1.add(xs, k + 1)
        if rng.random() < 0.5 or k == len(present) - 1:
            block = [p for p in pending if plan.worker_ids.index(p[0]) not in g0.filled]
            g0.add(a0_rows, [plan.worker_ids.index(w) for w, _ in block], [e for _, e in block])
    s1.agree(None, 1, "")
    s0.agree(s1.participants_message(), 1, "")
    st0, st1 = s0.current, s1.current
    slots = np.array([present.index(plan.worker_ids.index(w)) for w in st1.participants])
    positions = st0.positions()
    u = streaming.center_products(xs, plan.center)[slots] if plan.center is not None else None
    vv = np.dot(plan.center, plan.center) if plan.center is not None else None
    p0 = p1 = None
    if plan.validity:
        _seeds(s0, s1, seed)
        st0, st1 = s0.current, s1.current
        p1 = streaming.project_rows(xs, slots, st1.validity_seed, plan.center, chunk_bytes=8 * 5 * 6)
        p0 = streaming.project_rows(a0_rows, positions, st0.validity_seed, plan.center, chunk_bytes=8 * 5 * 6)
    return streaming.complete(st0, g0.share(positions), p0), streaming.complete(st1, g1.share(slots, u, vv), p1)


@pytest.mark.parametrize("reveal", [("distances",), ("norms",), ()], ids=["gram", "diag", "check-only"])
@pytest.mark.parametrize("center", [False, True], ids=["no-center", "center"])
def test_streamed_rows_give_exact_gram_shares_and_projections_in_any_order(reveal, center, monkeypatch):
    monkeypatch.setattr(streaming, "SLICE_COLUMNS", 5)     # S0 takes each block in several column slices
    monkeypatch.setattr(streaming, "MIN_BLOCK", 2)
    monkeypatch.setattr(streaming, "BLOCK_ROWS", 3)
    n, d = 7, 23
    seeds, seed = TripleSeeds.fresh(), bytes(range(16))
    runs = []
    for order, how in (([5, 0, 3, 6, 1, 4], _by_nodes), ([1, 4, 0, 6, 3, 5], _by_nodes), ([6, 5, 4, 3, 1, 0], _by_hand)):
        s0, s1, plan, x = _round(n, d, reveal, center, True, seeds)   # position 2 never uploads
        runs.append(how(s0, s1, plan, x, order, np.random.default_rng(len(runs)), seed))
    for st0, st1 in runs[1:]:
        for want, got in zip(runs[0], (st0, st1)):
            assert np.array_equal(got.h, want.h) and np.array_equal(got.proj, want.proj)
            assert got.participants == want.participants == tuple(plan.worker_ids[i] for i in (0, 1, 3, 4, 5, 6))
    st0, st1 = runs[0]
    rows = [0, 1, 3, 4, 5, 6]
    y = x[rows] - plan.center if center else x[rows]
    h = server.gram_share(st0) + server.gram_share(st1)
    if plan.triple_kind == "gram":
        assert np.array_equal(h + h.T, 2 * np.matmul(y, y.T))      # H0 + H1 symmetrised is Y Y^T (mod 2^64)
    else:
        assert np.array_equal(h, np.einsum("ij,ij->i", y, y))
    lam = validity.params().projections
    want = validity.project_columns(x[rows], st0.validity_seed, lam, 0)
    assert np.array_equal((st0.proj + st1.proj)[:, :lam], want)
    if center:
        assert np.array_equal((st0.proj + st1.proj)[:, lam], np.matmul(x[rows], plan.center))


def test_s0_aborts_on_a_row_of_a_worker_s1_did_not_list():
    s0, s1, plan, x = _round(4, 5, ("distances",), False, False, TripleSeeds.fresh())
    for i in (0, 1, 2):
        s1.take_share(_share(s0, plan, x, i))
    rows = s1.open_rows()
    s0.take_rows(rows[:2])                              # workers 10 and 11
    s1.agree(None, 1, "")
    listed = M.Message(M.PARTICIPANTS, 3, "S1", "S0", fields={"workers": [10, 12]})
    with pytest.raises(RoundAborted, match=r"rows of \[11\]"):
        s0.agree(listed, 1, "")
    s0b, s1b, plan, x = _round(4, 5, ("distances",), False, False, TripleSeeds.fresh())
    for i in (0, 1, 2):
        s1b.take_share(_share(s0b, plan, x, i))
    rows = s1b.open_rows()
    s0b.agree(M.Message(M.PARTICIPANTS, 3, "S1", "S0", fields={"workers": [10, 12]}), 1, "")
    with pytest.raises(RoundAborted, match="did not list"):
        s0b.take_rows(rows)
    with pytest.raises(UnexpectedMessage, match="expected masked-open"):
        s0b.take_rows([M.Message(M.VALIDITY_MASKED_OPEN, 3, "S1", "S0", {"worker": 10}, {"e": np.zeros(5, np.uint64)})])
    with pytest.raises(UnexpectedMessage, match="has not arrived"):
        s0b.finish_opening()


def test_a_streamed_row_that_does_not_fit_is_refused():
    ids = (4, 5, 6)
    ok = streaming.opening_message(0, M.MASKED_OPEN, 5, np.zeros(3, dtype=np.uint64))
    assert streaming.read_opening(ok, ids, set(), 3)[0] == 5
    with pytest.raises(UnexpectedMessage, match="not in the round"):
        streaming.read_opening(streaming.opening_message(0, M.MASKED_OPEN, 7, np.zeros(3, np.uint64)), ids, set(), 3)
    with pytest.raises(UnexpectedMessage, match="second"):
        streaming.read_opening(ok, ids, {5}, 3)
    with pytest.raises(MalformedMessage, match="shape"):
        streaming.read_opening(ok, ids, set(), 4)
    bad = M.Message(M.MASKED_OPEN, 0, "S1", "S0", {"worker": True}, {"e": np.zeros(3, np.uint64)})
    with pytest.raises(UnexpectedMessage):
        streaming.read_opening(bad, ids, set(), 3)
    g = streaming.ColumnGram(3, "gram")
    g.add(np.zeros((3, 3), np.uint64), [1], [np.zeros(3, np.uint64)])
    with pytest.raises(UnexpectedMessage):
        g.add(np.zeros((3, 3), np.uint64), [1], [np.zeros(3, np.uint64)])
    with pytest.raises(UnexpectedMessage, match="has not arrived"):
        g.share(np.array([0, 1]))


def test_projections_of_leading_rows_equal_those_of_the_same_rows_picked_out():
    x = np.random.default_rng(5).integers(0, 2**64 - 1, size=(6, 29), dtype=np.uint64, endpoint=True)
    seed, center = bytes(range(16)), np.arange(29, dtype=np.uint64)
    lead = streaming.Projector(x, np.arange(4), seed, center, chunk_bytes=8 * 4 * 6)
    assert lead.leading
    picked = streaming.project_rows(x, np.array([3, 0, 1, 2]), seed, center, chunk_bytes=8 * 4 * 6)
    assert np.array_equal(lead.run(), picked[[1, 2, 3, 0]])


@pytest.mark.parametrize("center", [False, True], ids=["no-center", "center"])
def test_a_row_opened_piece_by_piece_is_the_row_opened_whole(center):
    """S1 forwards e = x1 - v - a1_p in column pieces while the share arrives (``deploy.server.forward``): any
    cut of the columns gives pieces that concatenate to ``opening_row``, bit for bit."""
    seeds = TripleSeeds(*(bytes([k]) * 32 for k in range(1, 4)))
    n, d = 4, 1_001
    s0, s1, plan, x = _round(n, d, ("distances",), center, False, seeds)
    t1 = s1.current.triple
    rng = np.random.default_rng(9)
    for i in range(n):
        x1 = _share(s0, plan, x, i).arrays["x1"]
        whole = streaming.opening_row(x1, t1, i, plan.center)
        cuts = np.unique(np.concatenate([[0, d], rng.integers(1, d, size=int(rng.integers(0, 6)))]))
        pieces = [streaming.opening_columns(x1[a:b], t1, i, plan.center, int(a)) for a, b in zip(cuts, cuts[1:])]
        assert np.array_equal(np.concatenate(pieces), whole)
        other = streaming.opening_columns(x1[:d // 2], t1, (i + 1) % n, plan.center, 0)
        assert not np.array_equal(other, whole[:d // 2])     # the position picks the pad


def test_a_message_header_is_read_from_the_first_bytes_alone():
    """``messages.read_header`` (S1 reads a share's header before its vector has arrived): None until the header
    is in, the header and the vector's offset then, and a MalformedMessage as soon as the bytes cannot be one."""
    msg = M.Message(M.SHARE_MASKED, 4, "worker-2", "S1", {"worker": 2}, {"x1": np.arange(6, dtype=np.uint64)})
    data = msg.to_bytes()
    offset = len(data) - 48
    for got in range(offset):
        assert M.read_header(memoryview(data)[:got], len(data)) is None
    h, at = M.read_header(memoryview(data)[:offset], len(data))
    assert at == offset and h["fields"] == {"worker": 2} and h["arrays"] == [["x1", "<u8", [6]]]
    with pytest.raises(MalformedMessage):
        M.read_header(memoryview(b"XXXX" + data[4:])[:5], len(data))
    with pytest.raises(MalformedMessage):
        M.read_header(memoryview(data)[:8], 20)                  # a header longer than the message
