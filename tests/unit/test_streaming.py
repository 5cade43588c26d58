"""protocol.streaming: the row-streamed opening and Gram shares equal the in-process column chunks bit for
bit (any arrival order, any block sizes, dropouts, gram and diag triples, with and without a center),
and the streamed rows refuse what does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from secrobust.errors import MalformedMessage, UnexpectedMessage
from secrobust.gates.dealer import TripleSeeds
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.protocol import streaming
from secrobust.protocol.nodes import DealerNode, ServerNode
from secrobust.protocol.offline import request_triple
from secrobust.protocol.server import RoundPlan
from secrobust.protocol.worker import share_key, share_update


def _round(n: int, d: int, reveal: tuple[str, ...], center: bool, present: list[int], validity: bool, seed: int):
    """Two servers with their triple and S1 with the present workers' shares; returns (s0, s1, plan, x)."""
    rng = np.random.default_rng(seed)
    x = ring.encode(rng.normal(size=(n, d)) * 0.3, 20)
    x[present[0]] = rng.integers(0, 2**64, size=d, dtype=np.uint64)     # a worker outside the encoder
    v = ring.encode(rng.normal(size=d) * 0.1, 20) if center else None
    plan = RoundPlan(3, tuple(range(10, 10 + n)), d, 20, reveal, v, "t-stream", 8 * 3 * n, validity)
    s0, s1 = ServerNode(0), ServerNode(1)
    s0.start_round(plan)
    s1.start_round(plan)
    m0, m1 = DealerNode().handle(request_triple(3, plan.triple_spec()), TripleSeeds.fresh())
    s0.receive_triple(m0)
    s1.receive_triple(m1)
    for i in present:
        w = plan.worker_ids[i]
        s1.receive_share(share_update(3, w, x[i], share_key(s0.share_key_message(w), 3, w, d)))
    return s0, s1, plan, x


def _in_process(s0: ServerNode, s1: ServerNode, seed: bytes):
    s1.agree(None, 1, "")
    s0.agree(s1.participants_message(), 1, "")
    if s0.current.plan.validity:
        m0, m1 = s0.validity_seed_message(seed), s1.validity_seed_message(seed)
        s0.receive_validity_seed(m1)
        s1.receive_validity_seed(m0)
    for start, stop in s1.chunks():
        s0.accumulate(s1.open_masked(start, stop))
        if s0.current.plan.validity:
            s0.project()
            s1.project()
    return s0.current, s1.current


@pytest.mark.parametrize("reveal", [("distances",), ("norms",), ()], ids=["gram", "diag", "check-only"])
@pytest.mark.parametrize("center", [False, True], ids=["no-center", "center"])
def test_streamed_rows_give_the_in_process_gram_shares_and_projections_exactly(reveal, center, monkeypatch):
    monkeypatch.setattr(streaming, "SLICE_COLUMNS", 5)     # S0 takes each block in several column slices
    n, d = 7, 23
    present = [5, 0, 3, 6, 1, 4]                       # arrival order; worker at position 2 never uploads
    rng = np.random.default_rng(9)
    a0, a1, plan, x = _round(n, d, reveal, center, present, True, 1)
    b0, b1 = ServerNode(0), ServerNode(1)
    b0.state, b1.state = a0.current, a1.current      # the same shares and triple, run in column chunks
    seed = bytes(range(16))
    want0, want1 = _in_process(b0, b1, seed)
    joint = want0.validity_seed

    s0, s1 = a0.current, a1.current
    kind = plan.triple_kind
    # S1: rows in arrival order, E row by row, Gram by blocks of random size
    xs = np.empty((n, d), dtype=np.uint64)
    g1 = streaming.RowGram(n, kind)
    g0 = streaming.ColumnGram(n, kind)
    a0_rows = streaming.s0_rows(s0.triple, np.arange(n))
    pending: list[tuple[int, np.ndarray]] = []
    for k, i in enumerate(present):
        w = plan.worker_ids[i]
        xs[k] = s1.inputs[w]
        msg = M.Message.from_bytes(streaming.opening_message(3, plan.open_kind, w, streaming.opening_row(
            xs[k], s1.triple, i, plan.center)).to_bytes())
        pending.append(streaming.read_opening(msg, plan.worker_ids, {w for w, _ in pending}, d))
        if rng.random() < 0.5 or k == len(present) - 1:
            g1.add(xs, k + 1)
        if rng.random() < 0.5 or k == len(present) - 1:
            block = [p for p in pending if plan.worker_ids.index(p[0]) not in g0.filled]
            g0.add(a0_rows, [plan.worker_ids.index(w) for w, _ in block], [e for _, e in block])
    a1.agree(None, 1, "")
    a0.agree(a1.participants_message(), 1, "")
    s0, s1 = a0.current, a1.current
    slots = np.array([present.index(plan.worker_ids.index(w)) for w in s1.participants])
    positions = s0.positions()
    u = streaming.center_products(xs, plan.center)[slots] if center else None
    vv = np.dot(plan.center, plan.center) if center else None
    h1 = g1.share(slots, u, vv)
    h0 = g0.share(positions)
    p1 = streaming.project_rows(xs, slots, joint, plan.center, chunk_bytes=8 * 5 * 6)
    p0 = streaming.project_rows(a0_rows, positions, joint, plan.center, chunk_bytes=8 * 5 * 6)
    done0, done1 = streaming.complete(s0, h0, p0), streaming.complete(s1, h1, p1)
    assert np.array_equal(done0.h, want0.h) and np.array_equal(done1.h, want1.h)
    assert np.array_equal(done0.proj, want0.proj) and np.array_equal(done1.proj, want1.proj)
    assert done0.done_until == done1.done_until == d and done0.pending is None


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
