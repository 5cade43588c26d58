"""Coordinate-wise robust rules on additive shares, revealing only the aggregate: median, trimmed mean, Bulyan.

Each server holds an (n, d) share in Z_2^64 of the n participating workers' encoded updates (rows that passed
the input validity check, so every coordinate satisfies |x_c| <= bound, ``validity.params().bound`` = 2^27
scaled units by default). The circuit sorts every coordinate's n values at once with a comparator network and
returns this party's share (d,) of the aggregate at scale 2^(F+W), W = ``ring.WEIGHT_FRAC_BITS``: the scale of
``protocol.server.aggregate_share``, so the caller adds DP noise shares and reveals it in the same way
(``ring.decode(total, F + W)``).

Comparator (i, j), i < j, on one layer of the network, for all its comparators and all d coordinates at once:
  b = [x_j < x_i]                  ``arith.less_than`` at width ``arith.signed_width(2 * bound)`` (30 bits by default)
  [b] in the ring                  ``arith.to_ring`` (one daBit per value)
  p = b * (x_j - x_i)              ``arith.mul`` (one product triple per value)
  wire i <- x_i + p = min,  wire j <- x_j - p = max      (lo + hi = x_i + x_j exactly, so sums are kept)
The network is Batcher's odd-even merge sort on the next power of two, with every comparator that touches a wire
>= n dropped (with +inf on those wires they never swap, so no sentinel is needed), then pruned backwards: a rule
needs only the *sum* of the sorted wires [lo, hi), which is either that sum or the total minus the sum of the
complement, so only the comparators that feed the smaller of the two wire sets are kept. Comparisons are exact on
the ring integers; only the final scaling multiplies by a public constant.

Rules (f public):
  median         middle value x 2^W (odd n), (a + b) x 2^(W-1) for the two middle values (even n; NumPy's median);
                 needs n >= 2f + 1 (f only sets the minimum n).
  trimmed-mean   sum of sorted values [f, n - f) x round(2^W / (n - 2f)); needs n >= 2f + 1.
  bulyan         theta = n - 2f workers chosen by iterated Krum on the shared squared distances (theta times: the
                 Krum scores over the workers not yet chosen, score = sum of the max(0, r - f - 2) smallest
                 distances to the other r - 1 of them, the lowest score wins, ties to the lower index), then per
                 coordinate the trimmed mean of the theta chosen values dropping their f largest and f smallest
                 (beta = theta - 2f = n - 4f values kept), as issue 10 words it (El Mhamdi et al. 2018 keep the
                 beta values closest to the median instead). Needs n >= 4f + 3 and shares of the pairwise squared
                 distances D (n, n) at scale 2^(2F); the Krum steps reuse ``circuits.selection`` (constant-round scores
                 by all-pairs ranks), see ``selection_circuit``. The choice stays shared: each of the 2f workers not chosen has
                 its values replaced by the public sentinel -(bound + 1) (the first f of them, in index order) or
                 +(bound + 1) (the others), so the sorted values are f low sentinels, the theta chosen values, f high
                 sentinels, and the kept values are the sorted wires [2f, n - 2f).

Every opened array is a secret plus a fresh uniform mask (AND openings, daBit openings, product openings), so
what each party receives is uniform and independent of the inputs; the only output is the aggregate's share.
Nothing here samples randomness or does I/O: ``run_coordinatewise`` takes the dealer's seeds like
``arith.run_both``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..gates import arith, compare
from ..gates.arith import Budget, Material
from ..gates.compare import AndTripleSeeds, Party
from ..primitives import ring
from . import selection, validity

COORDINATEWISE_RULES = ("median", "trimmed-mean", "bulyan")
_U = np.uint64


# Comparator networks.

def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on n wires, as (i, j), i < j: after it, wire i holds the min.

    Built for the next power of two; comparators touching a wire >= n are dropped (with +inf there they would
    never swap)."""
    size = 1
    while size < n:
        size *= 2
    out = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        out.append((a, b))
            k //= 2
        p *= 2
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    """The pruned network that yields the sum of the sorted wires [lo, hi) of n: ``layers`` of disjoint
    comparators (two index arrays each); the sum is over ``live`` wires, or the total minus it (``complement``)."""

    n: int
    lo: int
    hi: int
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    live: tuple[int, ...]
    complement: bool

    @property
    def comparators(self) -> int:
        return sum(len(i) for i, _ in self.layers)


def _prune(net: tuple[tuple[int, int], ...], live: set[int]) -> list[tuple[int, int]]:
    keep, need = [], set(live)
    for i, j in reversed(net):
        if i in need or j in need:
            keep.append((i, j))
            need.update((i, j))
    return keep[::-1]


def _layers(comps: list[tuple[int, int]]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """As-soon-as-possible layering (a comparator runs one layer after the last one on either of its wires)."""
    ready: dict[int, int] = {}
    by_depth: dict[int, list[tuple[int, int]]] = {}
    for i, j in comps:
        depth = max(ready.get(i, 0), ready.get(j, 0))
        by_depth.setdefault(depth, []).append((i, j))
        ready[i] = ready[j] = depth + 1
    return tuple((np.array([c[0] for c in by_depth[t]]), np.array([c[1] for c in by_depth[t]]))
                 for t in sorted(by_depth))


@functools.lru_cache(maxsize=None)
def plan(n: int, lo: int, hi: int) -> Plan:
    """The cheaper of: sorting the wires [lo, hi) into place, or the complement (and subtracting from the total)."""
    if not 0 <= lo <= hi <= n:
        raise ValueError(f"need 0 <= lo <= hi <= n, got lo={lo}, hi={hi}, n={n}")
    net = batcher_network(n)
    direct = set(range(lo, hi))
    other = set(range(n)) - direct
    a, b = _prune(net, direct), _prune(net, other)
    if len(b) < len(a):
        return Plan(n, lo, hi, _layers(b), tuple(sorted(other)), True)
    return Plan(n, lo, hi, _layers(a), tuple(sorted(direct)), False)


def plain_apply(p: Plan, values: np.ndarray) -> np.ndarray:
    """The plan on plaintext signed values (n, m) -> the (m,) sums, in the ring (for tests)."""
    v = np.array(values, dtype=np.int64)
    for i, j in p.layers:
        lo, hi = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
        v[i], v[j] = lo, hi
    u = v.view(_U)
    part = u[list(p.live)].sum(axis=0, dtype=_U)
    return u.sum(axis=0, dtype=_U) - part if p.complement else part


# Options.

def min_participants(rule: str, f: int) -> int:
    check_rule(rule)
    return 4 * f + 3 if rule == "bulyan" else 2 * f + 1


def check_rule(rule: str) -> None:
    if rule not in COORDINATEWISE_RULES:
        raise ValueError(f"unknown coordinate-wise rule {rule!r}; allowed: {', '.join(COORDINATEWISE_RULES)}")


def check_options(rule: str, n: int, f: int, bound: int) -> None:
    """Raise ValueError naming what is allowed for a bad rule, f, n or bound."""
    check_rule(rule)
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ValueError(f"f must be an integer >= 0, got {f!r}")
    if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)) or not 1 <= bound < 2**61:
        raise ValueError(f"bound must be an integer in [1, 2^61), got {bound!r}")
    need = min_participants(rule, int(f))
    if n < need:
        rel = "n >= 4f + 3" if rule == "bulyan" else "n >= 2f + 1"
        allowed = f"f in 0..{max_f(rule, n)}" if n >= min_participants(rule, 0) else f"at least {need} workers"
        raise ValueError(f"{rule} needs {rel}: f={f} needs at least {need} workers, got n={n} (allowed: {allowed})")
    if rule == "bulyan":
        _bulyan_widths(n, int(f), int(bound))


def max_f(rule: str, n: int) -> int:
    check_rule(rule)
    return (n - 3) // 4 if rule == "bulyan" else (n - 1) // 2


def _check_share(x: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != _U or x.ndim != 2 or 0 in x.shape:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what} must be a uint64 array of shape {shape or '(n, d)'} with n, d >= 1, got {got}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{what} must be a uint64 array of shape {shape}, got {x.shape}")
    return x


@dataclass(frozen=True)
class _Widths:
    dmax: int        # largest squared distance (2 bound)^2
    big_d: int       # added to the distances to chosen workers
    big_s: int       # added to the scores of chosen workers
    dist: int        # comparison width of the distances so pushed
    score: int       # comparison width of the scores so pushed


def _bulyan_widths(n: int, f: int, bound: int) -> _Widths:
    dmax = (2 * bound) ** 2
    kmax = max(0, n - f - 2)
    big_d, big_s = dmax + 1, kmax * dmax + 1
    w = _Widths(dmax, big_d, big_s, arith.signed_width(dmax + big_d), arith.signed_width(2 * big_s - 1))
    if max(w.dist, w.score) > 64:
        raise ValueError(f"bulyan's Krum scores at n={n}, f={f} and bound={bound} do not fit 64-bit comparisons "
                         f"({max(w.dist, w.score)} bits); use fewer workers or a smaller bound")
    return w


# Gates on (wires, m) blocks.

def _public(party: int, value) -> np.ndarray:
    v = np.asarray(value, dtype=_U)
    return v.copy() if party == 0 else np.zeros_like(v)


def _layer(party: int, v: np.ndarray, i: np.ndarray, j: np.ndarray, width: int, src: Material) -> Party:
    """One layer of disjoint comparators on the rows of v (wires, m), in place: three batched sub-circuits."""
    xi, xj = v[i], v[j]
    m = xi.size
    lt = yield from arith.less_than(party, xj, xi, width, src)
    b = yield from arith.to_ring(party, lt, m, src)
    p = (yield from arith.mul(party, b, xj - xi, src)).reshape(xi.shape)
    v[i] = xi + p
    v[j] = xj - p


def sum_ranks(party: int, v: np.ndarray, lo: int, hi: int, width: int, src: Material) -> Party:
    """Shares (m,) of the sum of the sorted values [lo, hi) of each column of v (n, m), for values whose pairwise
    differences lie in [-2^(width-1), 2^(width-1))."""
    p = plan(v.shape[0], lo, hi)
    v = np.array(v, dtype=_U)
    for i, j in p.layers:
        yield from _layer(party, v, i, j, width, src)
    part = v[list(p.live)].sum(axis=0, dtype=_U)
    return v.sum(axis=0, dtype=_U) - part if p.complement else part


# Bulyan's selection.

def selection_circuit(party: int, d_share: np.ndarray, f: int, bound: int, src: Material) -> Party:
    """Ring shares (n,) of Bulyan's choice (1 for the theta = n - 2f workers chosen by iterated Krum), from
    shares of the pairwise squared distances (n, n) at scale 2^(2F), each at most Dmax = (2 bound)^2.

    Step t (t workers chosen, r = n - t left): the chosen workers' columns get + (Dmax + 1), so they are beyond
    every real distance and the k = r - f - 2 smallest of a row are real ones; those sums are
    ``selection.krum_scores`` with f + t in place of f (k = n - (f + t) - 2). The chosen workers' scores get
    + (k_max Dmax + 1), so ``selection.smallest`` (m = 1, ties to the lower index) picks the unchosen worker
    with the lowest score; one daBit conversion makes its one-hot vector a ring vector. When k < 1 every score
    is 0 and the lowest unchosen index wins, like the twin. About 27 rounds per step."""
    n = d_share.shape[0]
    w = _bulyan_widths(n, f, bound)
    theta = n - 2 * f
    if theta == n:
        return _public(party, np.ones(n, dtype=_U))
    off = ~np.eye(n, dtype=bool)
    chosen = np.zeros(n, dtype=_U)
    for t in range(theta):
        if n - t - f - 2 >= 1:
            pushed = d_share + np.where(off, chosen[None, :] * _U(w.big_d), _U(0))
            scores = yield from selection.krum_scores(party, pushed, f + t, w.dmax + w.big_d, src)
        else:
            scores = np.zeros(n, dtype=_U)
        plane = yield from selection.smallest(party, scores + chosen * _U(w.big_s), 1, w.score, src)
        chosen = chosen + (yield from arith.to_ring(party, plane, n, src))
    return chosen


def _apply_choice(party: int, x: np.ndarray, chosen: np.ndarray, f: int, bound: int, src: Material) -> Party:
    """x with the rows of the 2f unchosen workers replaced by -(bound + 1) (the first f in index order) or
    +(bound + 1) (the others): rank_i = unchosen before i (a prefix sum, linear), t_i = u_i [rank_i < f]."""
    n = x.shape[0]
    u = _public(party, np.ones(n, dtype=_U)) - chosen
    rank = np.concatenate([np.zeros(1, dtype=_U), np.cumsum(u, dtype=_U)[:-1]])
    lt = yield from arith.less_than(party, rank, _public(party, np.full(n, f, dtype=_U)), arith.signed_width(n), src)
    low = yield from arith.to_ring(party, lt, n, src)
    prod = yield from arith.mul(party, np.concatenate([u, np.repeat(chosen, x.shape[1])]),
                                np.concatenate([low, x.ravel()]), src)
    t, kept = prod[:n], prod[n:].reshape(x.shape)
    big = _U(bound + 1)
    return kept + ((u - t - t) * big)[:, None]


# The circuit.

def coordinatewise_circuit(party: int, x_share: np.ndarray, rule: str, f: int, bound: int, src: Material,
                           distances: np.ndarray | None = None, chosen: np.ndarray | None = None) -> Party:
    """This party's ring share (d,) of the rule's aggregate at scale 2^(F+W).

    x_share: (n, d) uint64 share of validity-checked rows (|x_c| <= bound). Bulyan also takes this party's share
    of the squared distances ``distances`` (n, n), or of its choice ``chosen`` (n,) from ``selection_circuit``
    (to run the choice once and the coordinates in chunks)."""
    x = _check_share(x_share, "x_share")
    n = x.shape[0]
    check_options(rule, n, f, bound)
    f = int(f)
    width = arith.signed_width(2 * bound)
    if rule == "median":
        lo, hi = (n - 1) // 2, n // 2 + 1
        total = yield from sum_ranks(party, x, lo, hi, width, src)
        return total * _U(1 << (ring.WEIGHT_FRAC_BITS - (hi - lo - 1)))
    if rule == "trimmed-mean":
        total = yield from sum_ranks(party, x, f, n - f, width, src)
        return total * ring.encode_weights(1.0 / (n - 2 * f))
    if chosen is None:
        if distances is None:
            raise ValueError("bulyan needs this party's share of the pairwise squared distances (n, n) or of its choice")
        _check_share(distances, "distances", (n, n))
        chosen = yield from selection_circuit(party, distances, f, bound, src)
    elif np.asarray(chosen).dtype != _U or np.asarray(chosen).shape != (n,):
        raise ValueError(f"chosen must be a uint64 share of shape ({n},)")
    if f:
        x = yield from _apply_choice(party, x, chosen, f, bound, src)
    total = yield from sum_ranks(party, x, 2 * f, n - 2 * f, arith.signed_width(2 * bound + 2), src)
    return total * ring.encode_weights(1.0 / (n - 4 * f))


# Plaintext twins.

def plain_bulyan_choice(encoded: np.ndarray, f: int) -> np.ndarray:
    """Bulyan's iterated Krum on exact ring distances: bool (n,) of the theta = n - 2f chosen workers."""
    dist = squared_distances(encoded).view(np.int64)
    n = dist.shape[0]
    chosen = np.zeros(n, dtype=bool)
    for t in range(n - 2 * f):
        rest = np.flatnonzero(~chosen)
        k = max(0, rest.size - f - 2)
        sub = dist[np.ix_(rest, rest)].astype(object)
        scores = [sum(sorted(sub[a, b] for b in range(rest.size) if b != a)[:k]) for a in range(rest.size)]
        chosen[rest[int(np.argmin(scores))]] = True
    return chosen


def _norms_within(v: np.ndarray, bound: int) -> bool:
    sq = np.einsum("ij,ij->i", v.astype(np.float64), v.astype(np.float64))
    near = np.flatnonzero(sq > bound**2 * (1 - 1e-9))
    return all(sum(int(c) * int(c) for c in v[i]) <= bound**2 for i in near)


def plain_coordinatewise(encoded: np.ndarray, rule: str, f: int, bound: int | None = None) -> np.ndarray:
    """Exactly what the circuit reveals (the ring total at scale 2^(F+W), uint64 (d,)), from the encoded rows."""
    x = np.asarray(encoded)
    bound = validity.params().bound if bound is None else bound
    _check_share(x, "encoded")
    n = x.shape[0]
    check_options(rule, n, f, bound)
    v = x.view(np.int64)
    if ((v < -bound) | (v > bound)).any():
        raise ValueError(f"a coordinate exceeds the bound {bound}: the circuit needs validity-checked rows")
    if rule == "bulyan" and not _norms_within(v, bound):
        raise ValueError(f"a row's L2 norm exceeds the bound {bound}: bulyan needs validity-checked rows")
    s = np.sort(v, axis=0).view(_U)
    if rule == "median":
        lo, hi = (n - 1) // 2, n // 2 + 1
        return s[lo:hi].sum(axis=0, dtype=_U) * _U(1 << (ring.WEIGHT_FRAC_BITS - (hi - lo - 1)))
    if rule == "trimmed-mean":
        return s[f:n - f].sum(axis=0, dtype=_U) * ring.encode_weights(1.0 / (n - 2 * f))
    chosen = plain_bulyan_choice(x, f)
    s = np.sort(v[chosen], axis=0).view(_U)
    return s[f:n - 3 * f].sum(axis=0, dtype=_U) * ring.encode_weights(1.0 / (n - 4 * f))


def squared_distances(encoded: np.ndarray) -> np.ndarray:
    """Exact pairwise squared distances of ring rows (n, n), at scale 2^(2F) (what the protocol's Gram gives)."""
    x = np.asarray(encoded, dtype=_U)
    sq = np.einsum("ij,ij->i", x, x)
    return sq[:, None] + sq[None, :] - _U(2) * np.matmul(x, x.T)


# Running both parties in one process.

@dataclass
class Cost:
    """What a run took: material (dealer bytes to S1 = budget.bytes_to_s1()), the rounds of the choice (Bulyan)
    and of one chunk's circuit (chunks are independent: sent together they would take no more rounds), the
    rounds as run here (chunks one after the other), the bytes each party sent, the wall-clock seconds and their
    split: sizing by dry runs, the dealer's expansion and corrections, running both parties."""

    budget: Budget = field(default_factory=Budget)
    choice_rounds: int = 0
    chunk_rounds: int = 0
    rounds_run: int = 0
    chunks: int = 0
    sent: list[int] = field(default_factory=lambda: [0, 0])
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: {"size": 0.0, "deal": 0.0, "run": 0.0})

    @property
    def rounds(self) -> int:
        """Rounds of the circuit on all d coordinates at once: the choice, then one chunk's rounds."""
        return self.choice_rounds + self.chunk_rounds


def _run(circuit: Callable[[int, Material], Party], corr_id: str, seeds: AndTripleSeeds, cost: Cost,
         sized: tuple[Budget, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    t0 = time.perf_counter()
    budget, rounds = arith.budget_of(circuit) if sized is None else sized
    t1 = time.perf_counter()
    src0, src1 = arith.sources(corr_id, budget, seeds)
    t2 = time.perf_counter()

    def count(a: np.ndarray, b: np.ndarray) -> None:
        cost.sent[0] += a.nbytes
        cost.sent[1] += b.nbytes
    out = compare.run_pair(circuit(0, src0), circuit(1, src1), count)
    if src0.used != budget or src1.used != budget:
        raise AssertionError(f"the circuit used {src0.used} / {src1.used}, its dry run {budget}")
    cost.budget = cost.budget + budget
    cost.rounds_run += rounds
    for phase, seconds in (("size", t1 - t0), ("deal", t2 - t1), ("run", time.perf_counter() - t2)):
        cost.phases[phase] += seconds
    return out


def run_coordinatewise(x0: np.ndarray, x1: np.ndarray, rule: str, f: int, seeds: AndTripleSeeds,
                       bound: int | None = None, d0: np.ndarray | None = None, d1: np.ndarray | None = None,
                       corr_id: str = "coordinatewise", chunk: int = 1 << 14
                       ) -> tuple[np.ndarray, np.ndarray, Cost]:
    """Both parties' output shares and the cost, in this process: the coordinates in chunks of ``chunk`` columns
    (each its own dealt material, to bound memory; chunks of one width are sized by one dry run); Bulyan's
    choice once, from the distance shares d0, d1."""
    bound = validity.params().bound if bound is None else bound
    _check_share(x0, "x0")
    _check_share(x1, "x1", x0.shape)
    n, d = x0.shape
    check_options(rule, n, f, bound)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    cost = Cost()
    start = time.perf_counter()
    c0 = c1 = None
    if rule == "bulyan":
        if d0 is None or d1 is None:
            raise ValueError("bulyan needs both parties' shares of the pairwise squared distances (d0, d1)")
        _check_share(d0, "d0", (n, n))
        _check_share(d1, "d1", (n, n))
        c0, c1 = _run(lambda p, s: selection_circuit(p, d0 if p == 0 else d1, f, bound, s),
                      f"{corr_id}/choice", seeds, cost)
        cost.choice_rounds = cost.rounds_run
    out0, out1 = np.empty(d, dtype=_U), np.empty(d, dtype=_U)
    sized: dict[int, tuple[Budget, int]] = {}
    for a in range(0, d, chunk):
        b = min(d, a + chunk)
        part = (x0[:, a:b], x1[:, a:b])

        def circuit(p: int, s: Material) -> Party:
            return coordinatewise_circuit(p, part[p], rule, f, bound, s, chosen=c0 if p == 0 else c1)
        if b - a not in sized:
            t0 = time.perf_counter()
            sized[b - a] = arith.budget_of(circuit)
            cost.phases["size"] += time.perf_counter() - t0
        out0[a:b], out1[a:b] = _run(circuit, f"{corr_id}/{a}", seeds, cost, sized[b - a])
        cost.chunk_rounds = max(cost.chunk_rounds, sized[b - a][1])
        cost.chunks += 1
    cost.seconds = time.perf_counter() - start
    return out0, out1, cost
