"""The arithmetic block (daBits, Beaver products, bounded comparisons) against plaintext, on random and edge words."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ringgen import M64, split, vectors

from secrobust.gates import arith as A
from secrobust.gates import compare as C


def run(circuit):
    return A.run_both(circuit, "test", C.AndTripleSeeds.fresh())


@settings(max_examples=30, deadline=None)
@given(x=vectors, y_seed=st.integers(0, 2**32), mask=st.integers(0, 2**32))
def test_products_match_the_ring(x, y_seed, mask):
    y = np.random.default_rng(y_seed).integers(0, M64 - 1, size=x.shape, dtype=np.uint64, endpoint=True)
    x0, x1 = split(x, mask)
    y0, y1 = split(y, mask + 1)
    a, b = run(lambda p, s: A.mul(p, x0 if p == 0 else x1, y0 if p == 0 else y1, s))
    np.testing.assert_array_equal(a + b, x * y)


@settings(max_examples=30, deadline=None)
@given(bits=hnp.arrays(np.bool_, st.integers(1, 300)), mask=st.integers(0, 2**32))
def test_xor_bits_become_ring_bits(bits, mask):
    m = bits.size
    x0 = np.random.default_rng(mask).integers(0, 2, size=m).astype(bool)
    p0, p1 = C.bits_plane(x0), C.bits_plane(x0 ^ bits)
    a, b = run(lambda p, s: A.to_ring(p, p0 if p == 0 else p1, m, s))
    np.testing.assert_array_equal(a + b, bits.astype(np.uint64))


def test_several_conversions_in_a_row_use_fresh_dabits_and_stay_exact():
    rng = np.random.default_rng(3)
    sizes = [5, 64, 65, 1, 130]
    bits = [rng.integers(0, 2, size=m).astype(bool) for m in sizes]

    def circuit(p, s):
        outs = []
        for b in bits:
            outs.append((yield from A.to_ring(p, C.bits_plane(b) if p == 0 else np.zeros(C.words_for(b.size), np.uint64),
                                             b.size, s)))
        return np.concatenate(outs)

    a, b = run(circuit)
    np.testing.assert_array_equal(a + b, np.concatenate(bits).astype(np.uint64))


@pytest.mark.parametrize("width", [2, 3, 8, 29, 58, 63, 64])
def test_bounded_less_than_at_the_edges_of_its_range(width):
    rng = np.random.default_rng(width)
    half = 1 << (width - 1)
    diffs = np.array([-half, -half + 1, -1, 0, 1, half - 1] + list(rng.integers(-half, half, size=200, dtype=np.int64)
                                                                      if width < 64 else
                                                                      rng.integers(-2**63, 2**63 - 1, size=200,
                                                                                   dtype=np.int64)),
                     dtype=object)
    y = rng.integers(0, M64 - 1, size=diffs.size, dtype=np.uint64, endpoint=True)
    x = np.array([(int(yy) + int(dd)) % M64 for yy, dd in zip(y, diffs)], dtype=np.uint64)
    x0, x1 = split(x, 1)
    y0, y1 = split(y, 2)
    a, b = run(lambda p, s: A.less_than(p, x0 if p == 0 else x1, y0 if p == 0 else y1, width, s))
    np.testing.assert_array_equal(C.plane_bits(a ^ b, x.size), np.array([d < 0 for d in diffs]))


def test_the_dry_run_sizes_the_material_exactly_and_a_short_source_is_refused():
    circuit = lambda p, s: A.less_than(p, np.zeros(100, np.uint64), np.zeros(100, np.uint64), 20, s)
    budget, rounds = A.budget_of(circuit)
    assert budget.and_words > 0 and rounds >= 2
    seeds = C.AndTripleSeeds.fresh()
    short = A.Budget(budget.and_words - 1, budget.dabit_words, budget.mults)
    src0, src1 = A.sources("t", short, seeds)
    with pytest.raises(ValueError, match="exhausted"):
        C.run_pair(circuit(0, src0), circuit(1, src1))
    with pytest.raises(ValueError, match="corrections"):
        A.Dealt(1, "t", budget, seeds.s1, None)

