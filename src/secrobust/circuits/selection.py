"""Krum and Multi-Krum on secret-shared squared distances: the rule runs in 2PC and opens nothing but its output.

Input: each server's ring share of D (n x n), D_ij = ||x_i - x_j||^2 at scale 2^(2F), with 0 <= D_ij <= Dmax
(the input validity check's bound b gives Dmax = (2b)^2). Every step is exact on the ring integers:
  1. per row i, for every pair a < b of the others: c = [D_ib < D_ia] (one layer of comparisons);
  2. rank_ij = #{l : l before j in row i} = sum of ring bits c or 1 - c (ties go to the lower index);
  3. s_ij = [rank_ij < k], k = n - f - 2, and score_i = sum_j s_ij D_ij (products of ring bits and D);
  4. for every pair a < b: [score_b < score_a]; pos_a = #{b before a} (ties to the lower index);
  5. chosen_a = [pos_a < m] (m = 1 for Krum), as XOR-shared bits.
This is ``rules.krum``'s Krum on exact integers: score_i is the sum of the k smallest D_ij, and the
chosen set is the first m of a stable sort of the scores. Each opening along the way is a value masked by a
fresh uniform word (``compare``, ``arith``), so a server's view is independent of the inputs; only what the
caller opens (the chosen bits, or nothing) is learnt. Rounds: about 26 whatever n is; comparisons
n (n-1)(n-2)/2 + n (n-1)/2 of about 3 log2(Dmax) AND gates each.
"""

from __future__ import annotations

import functools
import math
from itertools import combinations

import numpy as np

from ..gates import arith
from ..gates.compare import Party

_U = np.uint64


def score_width(n: int, f: int, dmax: int) -> int:
    """Comparison width for Krum scores (sums of n - f - 2 distances); ValueError if they could wrap."""
    k = n - f - 2
    width = arith.signed_width(max(k, 1) * dmax)
    if width > 64:
        raise ValueError(f"Krum scores of {k} distances up to {dmax} could reach 2^{width - 1}, beyond the ring: "
                         f"n - f - 2 must be below {2**63 // dmax + 1} at this norm bound (a tighter norm_bound "
                         "raises the limit)")
    return width


@functools.lru_cache(maxsize=64)
def _row_pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, a, b) for every row i and every pair a < b with a, b != i."""
    a, b = np.triu_indices(n, 1)
    rows = np.repeat(np.arange(n), a.size)
    aa, bb = np.tile(a, n), np.tile(b, n)
    keep = (aa != rows) & (bb != rows)
    return rows[keep], aa[keep], bb[keep]


def _one(party: int) -> _U:
    """A share of the public constant 1 (party 0 holds it)."""
    return _U(1) if party == 0 else _U(0)


def _ranks(party: int, before: np.ndarray, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...],
           index: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Ring shares of rank[j] = #{l : l before j}, from ring bits before[p] = [b_p before a_p] for pairs a < b."""
    rank = np.zeros(shape, dtype=_U)
    lead = () if index is None else index
    np.add.at(rank, (*lead, a), before)
    np.add.at(rank, (*lead, b), _one(party) - before)
    return rank


def krum_scores(party: int, dist: np.ndarray, f: int, dmax: int, src: arith.Material) -> Party:
    """Ring shares of score_i = sum of the n - f - 2 smallest D_ij over j != i (steps 1-3)."""
    n = dist.shape[0]
    k = n - f - 2
    if k < 1:
        raise ValueError(f"Krum needs n >= f + 3 to score; got n={n}, f={f}")
    rows, a, b = _row_pairs(n)
    if rows.size:
        plane = yield from arith.less_than(party, dist[rows, b], dist[rows, a], arith.signed_width(dmax), src)
        before = yield from arith.to_ring(party, plane, rows.size, src)
    else:
        before = np.zeros(0, dtype=_U)
    rank = _ranks(party, before, a, b, (n, n), (rows,))
    off = ~np.eye(n, dtype=bool)
    kept = rank[off]
    limit = np.full(kept.size, k if party == 0 else 0, dtype=_U)
    plane = yield from arith.less_than(party, kept, limit, arith.signed_width(n), src)
    sel = yield from arith.to_ring(party, plane, kept.size, src)
    prod = yield from arith.mul(party, sel, dist[off], src)
    return prod.reshape(n, n - 1).sum(axis=1, dtype=_U)


def smallest(party: int, values: np.ndarray, m: int, width: int, src: arith.Material) -> Party:
    """XOR plane of [value_a among the m smallest], ties to the lower index (steps 4-5); values within
    ``width``-bit signed differences of each other."""
    n = values.size
    if not 1 <= m <= n:
        raise ValueError(f"choose 1 <= m <= n = {n}, got m={m}")
    a, b = np.triu_indices(n, 1)
    if a.size:
        plane = yield from arith.less_than(party, values[b], values[a], width, src)
        before = yield from arith.to_ring(party, plane, a.size, src)
    else:
        before = np.zeros(0, dtype=_U)
    pos = _ranks(party, before, a, b, (n,))
    limit = np.full(n, m if party == 0 else 0, dtype=_U)
    return (yield from arith.less_than(party, pos, limit, arith.signed_width(n), src))


def krum_circuit(party: int, dist: np.ndarray, f: int, m: int, dmax: int, src: arith.Material) -> Party:
    """XOR plane of the m workers with the best Krum scores (Multi-Krum; Krum is m = 1)."""
    scores = yield from krum_scores(party, dist, f, dmax, src)
    return (yield from smallest(party, scores, m, score_width(dist.shape[0], f, dmax), src))


def plain_krum_chosen(dist: np.ndarray, f: int, m: int) -> np.ndarray:
    """The twin on the ring integers: the m smallest exact Krum scores, ties to the lower index."""
    d = np.asarray(dist, dtype=_U)
    n = d.shape[0]
    k = n - f - 2
    others = np.sort(d[~np.eye(n, dtype=bool)].reshape(n, n - 1), axis=1)
    scores = others[:, :k].sum(axis=1, dtype=_U)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.argsort(scores, kind="stable")[:m]] = True
    return chosen


# Minimum-diameter averaging (small n): every subset's diameter on shares, then the first smallest.

MAX_MDA_VALUES = 200_000
"""Cap on C(n, f) * C(n - f, 2), the pairwise distances the circuit reads over all subsets."""


@functools.lru_cache(maxsize=32)
def mda_subsets(n: int, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(membership (s, n) bool, pair rows, pair cols (s, p)) for the s = C(n, f) subsets of n - f workers, in
    the order ``rules.mda.choose_mda`` visits them (by the removed workers, lexicographically)."""
    keeps = [np.setdiff1d(np.arange(n), removed) for removed in combinations(range(n), f)]
    member = np.zeros((len(keeps), n), dtype=bool)
    for s, keep in enumerate(keeps):
        member[s, keep] = True
    a, b = np.triu_indices(n - f, 1)
    kept = np.array(keeps)
    return member, kept[:, a], kept[:, b]


def check_mda_size(n: int, f: int) -> None:
    values = math.comb(n, f) * math.comb(n - f, 2)
    if values > MAX_MDA_VALUES:
        raise ValueError(f"mda on shares would compare C({n}, {f}) x C({n - f}, 2) = {values} distances, more than "
                         f"{MAX_MDA_VALUES}: use it for small n (or reveal='distances')")


def column_max(party: int, values: np.ndarray, width: int, src: arith.Material) -> Party:
    """Ring shares of the maximum of each row of (s, p) shared values, by a tournament over the columns:
    max(a, b) = a + [a < b](b - a), one comparison, one conversion and one product per level."""
    cur = np.asarray(values, dtype=_U)
    while cur.shape[1] > 1:
        h = cur.shape[1] // 2
        a, b = cur[:, :h], cur[:, h:2 * h]
        plane = yield from arith.less_than(party, a.ravel(), b.ravel(), width, src)
        lt = yield from arith.to_ring(party, plane, a.size, src)
        step = yield from arith.mul(party, lt, (b - a).ravel(), src)
        top = a + step.reshape(a.shape)
        cur = np.concatenate([top, cur[:, 2 * h:]], axis=1) if cur.shape[1] % 2 else top
    return cur[:, 0]


def mda_circuit(party: int, dist: np.ndarray, f: int, dmax: int, src: arith.Material) -> Party:
    """Ring shares of the one-hot choice over subsets (first subset of smallest diameter) and the weights
    w_i = [i in the chosen subset], both as ring bits: (subset choice (s,), membership bits (n,))."""
    n = dist.shape[0]
    check_mda_size(n, f)
    member, rows, cols = mda_subsets(n, f)
    width = arith.signed_width(dmax)
    if rows.shape[1]:
        diam = yield from column_max(party, dist[rows, cols], width, src)
    else:
        diam = np.zeros(member.shape[0], dtype=_U)
    plane = yield from smallest(party, diam, 1, width, src)
    chosen = yield from arith.to_ring(party, plane, member.shape[0], src)
    return np.matmul(chosen, member.astype(_U))


def plain_mda_members(dist: np.ndarray, f: int) -> np.ndarray:
    """The twin: membership of the first subset of smallest exact (ring) diameter."""
    d = np.asarray(dist, dtype=_U)
    member, rows, cols = mda_subsets(d.shape[0], f)
    diam = d[rows, cols].max(axis=1) if rows.shape[1] else np.zeros(member.shape[0], dtype=_U)
    return member[int(np.argmin(diam))]
