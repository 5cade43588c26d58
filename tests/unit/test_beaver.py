"""Matrix Beaver triples (dealer.py) and the Gram/distance identities of docs/protocol.md, steps 2-4."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secrobust.errors import TripleReuseError
from secrobust.gates import dealer
from secrobust.gates.dealer import (
    TripleLedger,
    TripleSeeds,
    TripleShare0,
    TripleShare1,
    TripleSpec,
)
from secrobust.primitives import ring, sharing
from secrobust.protocol import server
from secrobust.protocol.messages import Message
from secrobust.protocol.nodes import ServerNode
from secrobust.protocol.offline import answer_request, request_triple
from secrobust.protocol.worker import share_key, share_update
from secrobust.rules.view import DISTANCES, NORMS

M64 = 2**64
seed16 = st.binary(min_size=16, max_size=16)
words = st.one_of(st.sampled_from([0, 1, 2, 2**62, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, M64 - 1))
kinds = st.sampled_from(dealer.TRIPLE_KINDS)


def exact_product(x: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """X Y^T over the integers, reduced mod 2^64 (independent of NumPy's wrapping matmul)."""
    xr = [[int(v) for v in r] for r in x]
    yr = [[int(v) for v in r] for r in y]
    return [[sum(a * b for a, b in zip(ri, rj)) % M64 for rj in yr] for ri in xr]


def exact_gram(x: np.ndarray) -> list[list[int]]:
    return exact_product(x, x)


def exact_cross(spec: TripleSpec, seeds: TripleSeeds, rows=None) -> list[list[int]]:
    """A0 A0^T + A0 A1^T + A1 A0^T for the given rows, over the integers mod 2^64 (C's symmetrisation)."""
    a0 = dealer.mask_columns(seeds.a0, spec, 0, 0, spec.d, rows)
    a1 = dealer.mask_columns(seeds.a1, spec, 1, 0, spec.d, rows)
    p, q = exact_product(a0, a1), exact_product(a0, a0)
    return [[(p[i][j] + p[j][i] + q[i][j]) % M64 for j in range(len(p))] for i in range(len(p))]


def assert_symmetrises_to(c: np.ndarray, g: list[list[int]]) -> None:
    """C's diagonal is g's, and C + C^T = 2g: all that the servers use of C (H_ii and H_ij + H_ji)."""
    assert np.diagonal(c).tolist() == [g[i][i] for i in range(len(g))]
    assert (c + c.T).tolist() == [[2 * v % M64 for v in row] for row in g]


@st.composite
def triples(draw, max_n=5, max_d=7):
    spec = TripleSpec(draw(st.text(max_size=8)), draw(st.integers(1, max_n)), draw(st.integers(1, max_d)), draw(kinds))
    return spec, TripleSeeds(draw(seed16), draw(seed16), draw(seed16))


# --- the dealer's triple ------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(t=triples())
def test_triple_shares_add_up_to_the_cross_products_of_the_masks(t):
    # Prepare
    spec, seeds = t
    # Execute
    part0, part1 = dealer.make_triple(spec, seeds)
    c = dealer.c0_share(part0.seed_c0, spec) + part1.c1
    # Assert: S0 holds only seeds; C0 + C1 symmetrises to A0 A0^T + A0 A1^T + A1 A0^T (the diagonal: equals it)
    assert isinstance(part0, TripleShare0) and isinstance(part1, TripleShare1)
    assert (part0.seed_a0, part0.seed_c0, part1.seed_a1) == (seeds.a0, seeds.c0, seeds.a1)
    g = exact_cross(spec, seeds)
    if spec.kind == "gram":
        assert part1.c1.shape == (spec.n, spec.n)
        assert_symmetrises_to(c, g)
    else:
        assert part1.c1.shape == (spec.n,)
        assert c.tolist() == [g[i][i] for i in range(spec.n)]


@settings(max_examples=20, deadline=None)
@given(t=triples(max_n=4, max_d=9), width=st.integers(1, 4))
def test_the_triple_does_not_depend_on_the_column_chunking(t, width):
    spec, seeds = t
    whole = dealer.make_triple(spec, seeds)[1].c1
    real = dealer.chunk_columns
    try:
        dealer.chunk_columns = lambda n, d, chunk_bytes=0: [(c, min(c + width, d)) for c in range(0, d, width)]
        chunked = dealer.make_triple(spec, seeds)[1].c1
    finally:
        dealer.chunk_columns = real
    np.testing.assert_array_equal(chunked, whole)


@settings(max_examples=20, deadline=None)
@given(t=triples(max_n=4, max_d=9), widths=st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_mask_streams_give_the_mask_columns_range_after_range(t, widths):
    spec, seeds = t
    for party, seed in ((0, seeds.a0), (1, seeds.a1)):
        streams, start = dealer.mask_streams(seed, spec, party), 0
        for width in widths:
            stop = min(start + width, spec.d)
            got = dealer.next_columns(streams, stop - start)
            np.testing.assert_array_equal(got, dealer.mask_columns(seed, spec, party, start, stop))
            out = np.full((spec.n, stop - start), 7, dtype=np.uint64)
            assert dealer.mask_columns(seed, spec, party, start, stop, out=out) is out
            np.testing.assert_array_equal(out, got)
            start = stop


@pytest.mark.parametrize("n,d,chunk,want", [
    (2, 10, 32, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]),
    (4, 3, 8, [(0, 1), (1, 2), (2, 3)]),
    (1, 3, 1 << 20, [(0, 3)]),
    (3, 0, 64, []),
])
def test_chunk_columns_cover_the_columns_in_order(n, d, chunk, want):
    assert dealer.chunk_columns(n, d, chunk) == want


@settings(max_examples=40, deadline=None)
@given(t=triples(max_n=6, max_d=8), data=st.data())
def test_mask_columns_windows_and_row_subsets_are_views_of_the_same_mask(t, data):
    # Prepare
    spec, seeds = t
    start = data.draw(st.integers(0, spec.d - 1))
    stop = data.draw(st.integers(start + 1, spec.d))
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, spec.n - 1)))), dtype=np.int64)
    for party, seed in ((0, seeds.a0), (1, seeds.a1)):
        full = dealer.mask_columns(seed, spec, party, 0, spec.d)
        # Execute
        win = dealer.mask_columns(seed, spec, party, start, stop, rows)
        # Assert
        assert win.shape == (rows.size, stop - start) and win.dtype == np.uint64
        np.testing.assert_array_equal(win, full[rows, start:stop])
    # A0's rows are the workers' S0 shares: row i is keyed by the key S0 hands worker i.
    np.testing.assert_array_equal(dealer.mask_columns(seeds.a0, spec, 0, 0, spec.d),
                                  sharing.input_rows(seeds.a0, range(spec.n), 0, spec.d))


@settings(max_examples=40, deadline=None)
@given(t=triples(max_n=6), data=st.data())
def test_a_sub_triple_for_a_subset_of_rows_is_consistent(t, data):
    # Prepare: the workers at row positions P are the ones that reached both servers
    spec, seeds = t
    pos = np.array(sorted(data.draw(st.sets(st.integers(0, spec.n - 1), min_size=1))), dtype=np.int64)
    part0, part1 = dealer.make_triple(spec, seeds)
    # Execute
    c0, c1 = dealer.c0_share(part0.seed_c0, spec), part1.c1
    c_sub = c0[np.ix_(pos, pos)] + c1[np.ix_(pos, pos)] if spec.kind == "gram" else c0[pos] + c1[pos]
    # Assert
    g = exact_cross(spec, seeds, pos)
    if spec.kind == "gram":
        assert_symmetrises_to(c_sub, g)
    else:
        assert c_sub.tolist() == [g[i][i] for i in range(pos.size)]


# --- the Gram-share identity (docs/protocol.md step 3, as in protocol/server.py) -----------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), d=st.integers(1, 6), seeds=st.tuples(seed16, seed16, seed16), data=st.data())
def test_gram_shares_symmetrise_to_twice_x_x_transpose_and_give_exact_distances(n, d, seeds, data):
    # Prepare: any X in Z_2^64 (wrap-around values included) and a gram triple; S0's share is A0
    x = data.draw(hnp.arrays(np.uint64, (n, d), elements=words))
    spec = TripleSpec("t", n, d, "gram")
    ts = TripleSeeds(*seeds)
    part0, part1 = dealer.make_triple(spec, ts)
    a0 = dealer.mask_columns(ts.a0, spec, 0, 0, d)
    a1 = dealer.mask_columns(ts.a1, spec, 1, 0, d)
    c0, c1 = dealer.c0_share(part0.seed_c0, spec), part1.c1
    x1 = x - a0
    # Execute: S1 opens E = X1 - A1; H_0 = 2 A0 E^T + C_0, H_1 = X1 X1^T + C_1
    e = x1 - a1
    h0 = np.matmul(a0, (e + e).T) + c0
    h1 = np.matmul(x1, x1.T) + c1
    h = h0 + h1
    dist = np.diagonal(h)[:, None] + np.diagonal(h)[None, :] - h - h.T
    # Assert
    g = exact_gram(x)
    assert (h + h.T).tolist() == [[2 * v % M64 for v in row] for row in g]
    assert np.diagonal(h).tolist() == [g[i][i] for i in range(n)]
    xi = [[int(v) for v in r] for r in x]
    want = [[sum((p - q) ** 2 for p, q in zip(xi[i], xi[j])) % M64 for j in range(n)] for i in range(n)]
    assert dist.tolist() == want


def _run_gram_phase(x, worker_ids, present, reveal, chunk_bytes, seeds, frac_bits=0, order=None):
    """Drive both servers through steps 0-4 in process, the shares arriving in ``order`` (default: plan
    order), each opened to S0 as one row of E as it arrives (``protocol.streaming``)."""
    plan = server.RoundPlan(5, tuple(worker_ids), x.shape[1], frac_bits, reveal, triple_id="tid", chunk_bytes=chunk_bytes,
                            validity=False)
    s0, s1 = ServerNode(0), ServerNode(1)
    s0.start_round(plan)
    s1.start_round(plan)
    to0, to1 = answer_request(request_triple(5, plan.triple_spec()), TripleSeeds(*seeds[:3]), TripleLedger())
    s0.receive_triple(Message.from_bytes(to0.to_bytes()))
    s1.receive_triple(Message.from_bytes(to1.to_bytes()))
    for w in order or [w for w in worker_ids if w in present]:
        key = share_key(s0.share_key_message(w), 5, w, x.shape[1])
        s1.take_share(share_update(5, w, x[worker_ids.index(w)], key))
        s0.take_rows([Message.from_bytes(e.to_bytes()) for e in s1.open_rows()])
        s1.add_gram()
    s1.agree(None, 1, "")
    s0.agree(s1.participants_message(), 1, "")
    s0.finish_opening()
    s1.finish_opening()
    return s0.current, s1.current


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), d=st.integers(1, 6), chunk_bytes=st.integers(8, 120),
       seeds=st.lists(seed16, min_size=3, max_size=3), data=st.data())
def test_the_servers_gram_shares_and_opened_distances_are_exact(n, d, chunk_bytes, seeds, data):
    # Prepare: a plan of n workers, of which a non-empty subset (rows P) send their shares
    x = data.draw(hnp.arrays(np.uint64, (n, d), elements=words))
    ids = list(range(10, 10 + n))
    present = data.draw(st.sets(st.sampled_from(ids), min_size=1))
    pos = [k for k, w in enumerate(ids) if w in present]
    order = data.draw(st.permutations(sorted(present)))
    # Execute
    s0, s1 = _run_gram_phase(x, ids, present, (DISTANCES,), chunk_bytes, seeds, frac_bits=3, order=order)
    h = server.gram_share(s0) + server.gram_share(s1)
    s1 = server.open_view(s1, server.view_share_message(s0))
    # Assert: the sub-triple of the present rows makes H + H^T = 2 X_P X_P^T, D exact
    g = exact_gram(x[pos])
    assert (h + h.T).tolist() == [[2 * v % M64 for v in row] for row in g]
    dist = [[(g[i][i] + g[j][j] - 2 * g[i][j]) % M64 for j in range(len(pos))] for i in range(len(pos))]
    want = ring.decode(np.array(dist, dtype=np.uint64), 6)
    np.testing.assert_array_equal(s1.view.distances, want)
    assert s1.view.norms is None


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), d=st.integers(1, 6), chunk_bytes=st.integers(8, 120),
       seeds=st.lists(seed16, min_size=3, max_size=3), data=st.data())
def test_the_diag_triple_gives_exact_squared_norms(n, d, chunk_bytes, seeds, data):
    x = data.draw(hnp.arrays(np.uint64, (n, d), elements=words))
    ids = list(range(n))
    s0, s1 = _run_gram_phase(x, ids, set(ids), (NORMS,), chunk_bytes, seeds)
    assert s0.plan.triple_kind == "diag"
    h = server.gram_share(s0) + server.gram_share(s1)
    assert h.shape == (n,)
    assert h.tolist() == [sum(int(v) ** 2 for v in row) % M64 for row in x]


# --- ledger and spec ----------------------------------------------------------------------------

def test_the_ledger_refuses_a_second_claim():
    ledger = TripleLedger()
    ledger.claim("round-1")
    ledger.claim("round-2")
    assert "round-1" in ledger and "round-3" not in ledger
    with pytest.raises(TripleReuseError, match="triple 'round-1' was already used"):
        ledger.claim("round-1")


def test_the_dealer_and_a_server_refuse_a_reused_triple_id():
    spec = TripleSpec("same", 2, 3, "gram")
    dealer_ledger = TripleLedger()
    answer_request(request_triple(0, spec), TripleSeeds.fresh(), dealer_ledger)
    with pytest.raises(TripleReuseError):
        answer_request(request_triple(1, spec), TripleSeeds.fresh(), dealer_ledger)


@pytest.mark.parametrize("kind", ["full", "", "GRAM", "diagonal", None])
def test_triple_spec_rejects_unknown_kinds(kind):
    with pytest.raises(ValueError, match="triple kind must be one of"):
        TripleSpec("t", 2, 2, kind)


@pytest.mark.parametrize("n,d", [(0, 1), (1, 0), (-1, 3), (3, -2), (0, 0)])
def test_triple_spec_rejects_non_positive_sizes(n, d):
    with pytest.raises(ValueError, match="triple sizes must be positive"):
        TripleSpec("t", n, d, "gram")


@pytest.mark.parametrize("n", [2.5, "3"])
def test_triple_spec_rejects_non_integer_sizes(n):
    with pytest.raises(ValueError):
        TripleSpec("t", n, 2, "gram")
