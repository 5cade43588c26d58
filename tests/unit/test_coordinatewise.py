"""Coordinate-wise rules on shares (median, trimmed mean, Bulyan): the networks, secure == twin bit for bit,
twin == NumPy within the fixed-point error, the material, what each party sees, and bad options."""

from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ringgen import split
from scipy import stats
from viewstats import same_distribution_pvalue, uniform_pvalue

from secrobust.circuits import coordinatewise as CW
from secrobust.gates import arith as A
from secrobust.gates import compare as C
from secrobust.primitives import ring
from secrobust.rules.krum import krum_scores

M64 = 2**64
B = 2**27                          # validity.params().bound
F, W = ring.DEFAULT_FRAC_BITS, ring.WEIGHT_FRAC_BITS


def secure(enc: np.ndarray, rule: str, f: int, bound: int = B, mask: int = 0, chunk: int = 1 << 14,
           seeds: C.AndTripleSeeds | None = None):
    """Reveal the circuit's aggregate from random shares of enc (and of its distances, for Bulyan)."""
    x0, x1 = split(enc, mask)
    d0, d1 = split(CW.squared_distances(enc), mask + 1)
    a, b, cost = CW.run_coordinatewise(x0, x1, rule, f, seeds or C.AndTripleSeeds.fresh(), bound, d0, d1,
                                       chunk=chunk)
    return a + b, cost


def rows_within(rng: np.random.Generator, n: int, d: int, bound: int = B) -> np.ndarray:
    """Signed integer rows of L2 norm <= bound (what the validity check lets through), with some edge rows."""
    v = rng.normal(size=(n, d))
    v *= bound * rng.uniform(0, 1, size=(n, 1)) / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    x = np.trunc(v).astype(np.int64)
    if n >= 3:
        x[1] = x[0]                               # equal rows
        x[2, 0] = bound                           # a coordinate at +bound ...
        x[2, 1:] = 0
    if n >= 4 and d >= 2:
        x[3, :] = 0
        x[3, 1] = -bound                          # ... and at -bound
    return x


# The networks.

@pytest.mark.parametrize("n", range(1, 15))
def test_the_network_sorts_every_zero_one_input(n):
    v = np.array(list(product([0, 1], repeat=n)), dtype=np.int64).T
    for i, j in CW.batcher_network(n):
        assert i < j < n
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    assert (np.diff(v, axis=0) >= 0).all()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11, 12, 20])
def test_pruned_plans_give_the_sums_of_every_rank_range(n):
    rng = np.random.default_rng(n)
    v = rng.integers(-5, 6, size=(n, 400))                     # many ties
    s = np.sort(v, axis=0)
    full = len(CW.batcher_network(n))
    for lo in range(n + 1):
        for hi in range(lo, n + 1):
            p = CW.plan(n, lo, hi)
            assert p.comparators <= full
            for t, (i, j) in enumerate(p.layers):
                assert len(set(i) | set(j)) == 2 * len(i)        # a layer's comparators are disjoint
            np.testing.assert_array_equal(CW.plain_apply(p, v).view(np.int64), s[lo:hi].sum(axis=0))


def test_pruning_drops_comparators_the_rules_do_not_need():
    assert CW.plan(20, 0, 20).comparators == 0                  # trimmed mean with f = 0: the plain sum
    assert CW.plan(2, 0, 2).comparators == 0                    # median of two: their mean
    assert CW.plan(20, 9, 11).comparators < len(CW.batcher_network(20))
    assert CW.plan(16, 1, 15).comparators == 22                 # min and max of 16 need 22 = 3n/2 - 2


# Secure == twin, bit for bit.

def _f_values(rule: str, n: int) -> list[int]:
    return sorted({0, CW.max_f(rule, n)}) if n >= CW.min_participants(rule, 0) else []


CASES = [(rule, n, f) for rule in CW.COORDINATEWISE_RULES for n in range(1, 13) for f in _f_values(rule, n)]


@pytest.mark.parametrize("rule,n,f", CASES)
def test_secure_equals_the_twin_for_every_n_with_f_zero_and_max(rule, n, f):
    rng = np.random.default_rng(100 * n + f)
    enc = rows_within(rng, n, 7).view(np.uint64)
    out, cost = secure(enc, rule, f, mask=n)
    np.testing.assert_array_equal(out, CW.plain_coordinatewise(enc, rule, f))
    assert cost.sent[0] == cost.sent[1]


@st.composite
def instances(draw):
    rule = draw(st.sampled_from(CW.COORDINATEWISE_RULES))
    n = draw(st.integers(CW.min_participants(rule, 0), 12))
    f = draw(st.integers(0, CW.max_f(rule, n)))
    d = draw(st.integers(1, 6))
    bound = draw(st.sampled_from([1, 3, 1000, B]))
    seed = draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    if rule == "bulyan":
        x = rows_within(rng, n, d, bound)
    else:
        choice = draw(st.sampled_from(["uniform", "edges", "few"]))
        pool = {"uniform": np.arange(-bound, bound + 1) if bound < 10 else None,
                "edges": np.array([-bound, -bound + 1, -1, 0, 1, bound - 1, bound]),
                "few": np.array([-bound, 0, bound])}[choice]
        x = (rng.integers(-bound, bound + 1, size=(n, d)) if pool is None else rng.choice(pool, size=(n, d)))
    return rule, f, bound, x.astype(np.int64).view(np.uint64), seed


@settings(max_examples=40, deadline=None)
@given(case=instances())
def test_secure_equals_the_twin_on_random_instances(case):
    rule, f, bound, enc, seed = case
    out, _ = secure(enc, rule, f, bound, mask=seed, chunk=4)
    np.testing.assert_array_equal(out, CW.plain_coordinatewise(enc, rule, f, bound))


def test_chunks_do_not_change_the_result():
    enc = rows_within(np.random.default_rng(5), 9, 50).view(np.uint64)
    for rule, f in [("median", 2), ("trimmed-mean", 3), ("bulyan", 1)]:
        a, _ = secure(enc, rule, f, chunk=7)
        b, _ = secure(enc, rule, f, chunk=1000)
        np.testing.assert_array_equal(a, b)


def test_bulyan_keeps_its_choice_secret_but_applies_it():
    """Far outliers never reach the output: with f = 2 and 2 outliers among 11, Bulyan's value stays among the
    honest ones (the circuit opens no choice, yet the aggregate is the twin's)."""
    rng = np.random.default_rng(9)
    x = rng.integers(-1000, 1001, size=(11, 20))
    x[3], x[7] = 10**6, -(10**6)
    enc = x.view(np.uint64)
    out, _ = secure(enc, "bulyan", 2)
    np.testing.assert_array_equal(out, CW.plain_coordinatewise(enc, "bulyan", 2))
    assert np.abs(ring.decode(out, W)).max() <= 1000
    assert not CW.plain_bulyan_choice(enc, 2)[[3, 7]].any()


# The twin against NumPy on the real values.

def _real_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)) * 3.0
    v[0] = v[-1]                                             # ties
    return v


def _bulyan_reference(v: np.ndarray, f: int) -> np.ndarray:
    """Bulyan as issue 10 words it, in floats: theta = n - 2f by iterated Krum (rules.krum's scores on the
    remaining set), then per coordinate the mean of the chosen values without their f largest and f smallest."""
    n = v.shape[0]
    dist = ((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2)
    rest = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        sub = dist[np.ix_(rest, rest)]
        scores = krum_scores(sub, f) if len(rest) - f - 2 > 0 else np.zeros(len(rest))
        chosen.append(rest.pop(int(np.argmin(scores))))
    s = np.sort(v[chosen], axis=0)
    return s[f:len(chosen) - f].mean(axis=0)


def fixed_point_error(rule: str, n: int, f: int, v: np.ndarray) -> float:
    """Encoding moves each value by <= 2^-(F+1); the weight round(2^W / k) by <= 1/2, i.e. the mean of k values
    by <= |sum of the k values| 2^-(W+1) / k... bounded here by max|v| 2^-(W+1) k."""
    k = {"median": 1, "trimmed-mean": n - 2 * f, "bulyan": n - 4 * f}[rule]
    return 2.0 ** -(F + 1) + (np.abs(v).max() + 1) * k * 2.0 ** -(W + 1)


@pytest.mark.parametrize("rule,n,f", [("median", 1, 0), ("median", 7, 3), ("median", 10, 2), ("median", 12, 0),
                                      ("trimmed-mean", 5, 0), ("trimmed-mean", 9, 2), ("trimmed-mean", 12, 5),
                                      ("trimmed-mean", 20, 4), ("bulyan", 3, 0), ("bulyan", 11, 2),
                                      ("bulyan", 12, 2), ("bulyan", 20, 4)])
def test_the_twin_is_numpy_within_the_fixed_point_error(rule, n, f):
    rng = np.random.default_rng(n + 31 * f)
    v = _real_rows(rng, n, 300)
    enc = ring.encode(v, F)
    got = ring.decode(CW.plain_coordinatewise(enc, rule, f), F + W)
    if rule == "median":
        want = np.median(v, axis=0)
    elif rule == "trimmed-mean":
        want = stats.trim_mean(v, f / n + 1e-12, axis=0)     # scipy cuts int(proportion * n) = f from each end
        np.testing.assert_allclose(want, np.sort(v, axis=0)[f:n - f].mean(axis=0), rtol=0, atol=1e-12)
    else:
        want = _bulyan_reference(ring.decode(enc, F), f)     # the choice on the encoded values' distances
        want_real = _bulyan_reference(v, f)
        np.testing.assert_allclose(want, want_real, rtol=0, atol=fixed_point_error(rule, n, f, v))
    np.testing.assert_allclose(got, want, rtol=0, atol=fixed_point_error(rule, n, f, v))


def test_the_median_of_an_odd_count_is_exact_up_to_the_encoding():
    v = np.random.default_rng(2).normal(size=(9, 500))
    got = ring.decode(CW.plain_coordinatewise(ring.encode(v, F), "median", 0), F + W)
    np.testing.assert_array_equal(got, ring.decode(ring.encode(np.median(v, axis=0), F), F))


# Material, rounds and sizes.

@pytest.mark.parametrize("rule,n,f", [("median", 6, 1), ("trimmed-mean", 9, 2), ("bulyan", 7, 1)])
def test_the_dry_run_sizes_the_material_and_depends_on_sizes_only(rule, n, f):
    rng = np.random.default_rng(1)
    budgets = []
    for trial in range(2):
        enc = rows_within(rng, n, 30).view(np.uint64) if trial else np.zeros((n, 30), np.uint64)
        x0, x1 = split(enc, trial)
        d0, d1 = split(CW.squared_distances(enc), trial + 5)

        def circuit(p, s):
            return CW.coordinatewise_circuit(p, (x0, x1)[p], rule, f, B, s, distances=(d0, d1)[p])
        budget, rounds = A.budget_of(circuit)
        src0, src1 = A.sources("t", budget, C.AndTripleSeeds.fresh())
        a, b = C.run_pair(circuit(0, src0), circuit(1, src1))
        assert src0.used == src1.used == budget
        np.testing.assert_array_equal(a + b, CW.plain_coordinatewise(enc, rule, f))
        budgets.append((budget, rounds))
    assert budgets[0] == budgets[1]
    _, cost = secure(enc, rule, f, chunk=30)
    assert (cost.budget, cost.rounds) == budgets[0]
    assert cost.budget.bytes_to_s1() == 8 * (cost.budget.and_words + cost.budget.dabits + cost.budget.mults)


def test_a_short_source_is_refused():
    x = np.zeros((5, 3), np.uint64)
    circuit = lambda p, s: CW.coordinatewise_circuit(p, x, "median", 0, B, s)
    budget, _ = A.budget_of(circuit)
    short = A.Budget(budget.and_words, budget.dabit_words, budget.mults - 1)
    src0, src1 = A.sources("t", short, C.AndTripleSeeds.fresh())
    with pytest.raises(ValueError, match="exhausted"):
        C.run_pair(circuit(0, src0), circuit(1, src1))


# What each party sees.

def record(enc: np.ndarray, rule: str, f: int, seeds: C.AndTripleSeeds) -> tuple[list, list]:
    """Every array each party receives (the other's openings), in order."""
    x0, x1 = split(enc, 77)
    d0, d1 = split(CW.squared_distances(enc), 78)
    views: tuple[list, list] = ([], [])

    def circuit(p, s):
        return CW.coordinatewise_circuit(p, (x0, x1)[p], rule, f, B, s, distances=(d0, d1)[p])
    budget, _ = A.budget_of(circuit)
    src0, src1 = A.sources("view", budget, seeds)
    C.run_pair(circuit(0, src0), circuit(1, src1), lambda a, b: (views[1].append(a.copy()), views[0].append(b.copy())))
    return views


@pytest.mark.parametrize("rule,f", [("median", 2), ("trimmed-mean", 1), ("bulyan", 1)])
def test_each_party_receives_uniform_words_whatever_the_inputs(rule, f):
    """Same seeds, two very different inputs (all zero; extreme rows with ties): each party receives arrays of
    the same shapes, and their words are uniform and identically distributed (chi-square on each byte)."""
    n, d = 8, 1024
    seeds = C.AndTripleSeeds(b"\x01" * 32, b"\x02" * 32)
    zero = np.zeros((n, d), np.uint64)
    extreme = rows_within(np.random.default_rng(4), n, d).view(np.uint64)
    for party in (0, 1):
        va, vb = record(zero, rule, f, seeds)[party], record(extreme, rule, f, seeds)[party]
        assert [a.shape for a in va] == [b.shape for b in vb]
        wa, wb = np.concatenate([a.ravel() for a in va]), np.concatenate([b.ravel() for b in vb])
        assert wa.size > 20_000
        assert uniform_pvalue(wa) > 1e-4 and uniform_pvalue(wb) > 1e-4
        assert same_distribution_pvalue(wa, wb) > 1e-4


def test_the_uniformity_check_can_fail():
    words = np.random.default_rng(0).integers(0, 2**40, size=60_000, dtype=np.uint64)   # high bytes zero
    assert uniform_pvalue(words) < 1e-10


# Bad options.

@pytest.mark.parametrize("rule,n,f,match", [
    ("mean", 5, 0, "unknown coordinate-wise rule 'mean'; allowed: median, trimmed-mean, bulyan"),
    ("median", 5, 3, r"median needs n >= 2f \+ 1: f=3 needs at least 7 workers, got n=5 \(allowed: f in 0..2\)"),
    ("trimmed-mean", 4, 2, r"f in 0..1"),
    ("bulyan", 6, 1, r"bulyan needs n >= 4f \+ 3: f=1 needs at least 7 workers, got n=6 \(allowed: f in 0..0\)"),
    ("bulyan", 2, 0, r"at least 3 workers"),
    ("median", 5, -1, "f must be an integer >= 0"),
    ("median", 5, True, "f must be an integer >= 0"),
])
def test_bad_rules_and_f_are_refused_naming_what_is_allowed(rule, n, f, match):
    x = np.zeros((n, 3), np.uint64)
    with pytest.raises(ValueError, match=match):
        CW.plain_coordinatewise(x, rule, f)
    with pytest.raises(ValueError, match=match):
        CW.run_coordinatewise(x, x, rule, f, C.AndTripleSeeds.fresh(), d0=np.zeros((n, n), np.uint64),
                              d1=np.zeros((n, n), np.uint64))
    with pytest.raises(ValueError, match=match):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x, rule, f, B, s))


def test_bad_shapes_and_missing_inputs_are_refused():
    seeds = C.AndTripleSeeds.fresh()
    x = np.zeros((5, 3), np.uint64)
    with pytest.raises(ValueError, match=r"x_share must be a uint64 array of shape \(n, d\)"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x[0], "median", 0, B, s))
    with pytest.raises(ValueError, match="x_share must be a uint64"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x.astype(np.int64), "median", 0, B, s))
    with pytest.raises(ValueError, match="x_share must be a uint64"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, np.zeros((5, 0), np.uint64), "median", 0, B, s))
    with pytest.raises(ValueError, match=r"x1 must be a uint64 array of shape \(5, 3\)"):
        CW.run_coordinatewise(x, np.zeros((5, 4), np.uint64), "median", 0, seeds)
    with pytest.raises(ValueError, match="pairwise squared distances"):
        CW.run_coordinatewise(x, x, "bulyan", 0, seeds)
    with pytest.raises(ValueError, match="pairwise squared distances"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x, "bulyan", 0, B, s))
    with pytest.raises(ValueError, match=r"distances must be a uint64 array of shape \(5, 5\)"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x, "bulyan", 0, B, s,
                                                           distances=np.zeros((5, 4), np.uint64)))
    with pytest.raises(ValueError, match=r"chosen must be a uint64 share of shape \(5,\)"):
        A.budget_of(lambda p, s: CW.coordinatewise_circuit(p, x, "bulyan", 0, B, s, chosen=np.zeros(4, np.uint64)))
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        CW.run_coordinatewise(x, x, "median", 0, seeds, chunk=0)
    with pytest.raises(ValueError, match=r"bound must be an integer in \[1, 2\^61\)"):
        CW.plain_coordinatewise(x, "median", 0, bound=0)


def test_rows_beyond_the_bound_are_refused_by_the_twin_and_bulyan_limits_n():
    x = np.zeros((5, 3), np.int64)
    x[2, 1] = B + 1
    with pytest.raises(ValueError, match="exceeds the bound"):
        CW.plain_coordinatewise(x.view(np.uint64), "median", 0)
    x[2, 1], x[2, 0] = B, 1
    with pytest.raises(ValueError, match="L2 norm exceeds the bound"):
        CW.plain_coordinatewise(x.view(np.uint64), "bulyan", 0)
    with pytest.raises(ValueError, match="do not fit 64-bit comparisons"):
        CW.check_options("bulyan", 200, 0, B)
