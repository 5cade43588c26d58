"""The comparison block against its plaintext twins, on random and edge values of Z_2^64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ringgen import EDGES, M64, split, vectors, words

from secrobust.gates import arith
from secrobust.gates import compare as C


def run(circuit) -> tuple[np.ndarray, int]:
    """Both parties of circuit(party, source) with fresh dealer bit triples; (XOR of outputs, words used)."""
    words_needed, _ = arith.count_words(circuit)
    seeds = C.AndTripleSeeds.fresh()
    c1 = C.make_and_triple("test", words_needed, seeds)
    s0 = C.AndSource.for_party(0, "test", words_needed, seeds.s0)
    s1 = C.AndSource.for_party(1, "test", words_needed, seeds.s1, c1)
    out0, out1 = C.run_pair(circuit(0, s0), circuit(1, s1))
    assert s0.used == s1.used == words_needed
    return out0 ^ out1, words_needed


@settings(max_examples=40, deadline=None)
@given(x=vectors, c=words, mask=st.integers(0, 2**32))
def test_less_than_public_matches_the_twin(x, c, mask):
    x0, x1 = split(x, mask)
    out, _ = run(lambda p, s: C.less_than_public(p, x0 if p == 0 else x1, c, s))
    np.testing.assert_array_equal(C.plane_bits(out, x.size), C.plain_less_than_public(x, c))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), mask=st.integers(0, 2**32))
def test_less_than_public_with_a_constant_per_element(data, mask):
    x = data.draw(vectors)
    c = data.draw(hnp.arrays(np.uint64, x.shape, elements=words))
    x0, x1 = split(x, mask)
    out, _ = run(lambda p, s: C.less_than_public(p, x0 if p == 0 else x1, c, s))
    np.testing.assert_array_equal(C.plane_bits(out, x.size), C.plain_less_than_public(x, c))


@settings(max_examples=40, deadline=None)
@given(x=vectors, mask=st.integers(0, 2**32))
def test_msb_matches_the_twin(x, mask):
    x0, x1 = split(x, mask)
    out, _ = run(lambda p, s: C.msb(p, x0 if p == 0 else x1, s))
    np.testing.assert_array_equal(C.plane_bits(out, x.size), C.plain_msb(x))


small = st.integers(-(2**62), 2**62 - 1)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), mask=st.integers(0, 2**32))
def test_signed_less_than_in_its_range(data, mask):
    n = data.draw(st.integers(1, 100))
    x = np.array(data.draw(st.lists(small, min_size=n, max_size=n)), dtype=np.int64).view(np.uint64)
    y = np.array(data.draw(st.lists(small, min_size=n, max_size=n)), dtype=np.int64).view(np.uint64)
    x0, x1 = split(x, mask)
    y0, y1 = split(y, mask + 1)
    out, _ = run(lambda p, s: C.less_than(p, x0 if p == 0 else x1, y0 if p == 0 else y1, s))
    np.testing.assert_array_equal(C.plane_bits(out, n), C.plain_less_than(x, y))


@settings(max_examples=30, deadline=None)
@given(a=vectors, bits=st.integers(1, 64), mask=st.integers(0, 2**32))
def test_carry_out_of_two_private_values(a, bits, mask):
    b = np.random.default_rng(mask).integers(0, M64 - 1, size=a.shape, dtype=np.uint64, endpoint=True)
    out, _ = run(lambda p, s: C.carry_out(p, a if p == 0 else b, bits, s))
    np.testing.assert_array_equal(C.plane_bits(out, a.size), C.plain_carry_out(a, b, bits))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 20), m=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_and_reduce_is_the_and_of_the_rows(rows, m, seed):
    rng = np.random.default_rng(seed)
    bits = rng.random((rows, m)) < 0.9
    planes = np.stack([C.bits_plane(r) for r in bits])
    p0 = rng.integers(0, M64 - 1, size=planes.shape, dtype=np.uint64, endpoint=True)
    out, _ = run(lambda p, s: C.and_reduce(p, p0 if p == 0 else p0 ^ planes, s))
    np.testing.assert_array_equal(C.plane_bits(out, m), bits.all(axis=0))


def test_planes_round_trip_and_pad_with_zeros():
    x = np.array(EDGES * 10, dtype=np.uint64)
    planes = C.to_planes(x)
    assert planes.shape == (64, C.words_for(x.size))
    back = sum(C.plane_bits(planes[j], x.size).astype(np.uint64) << np.uint64(j) for j in range(64))
    np.testing.assert_array_equal(back, x)
    assert not C.plane_bits(planes[0], C.words_for(x.size) * 64)[x.size:].any()


def test_openings_are_masked_by_the_triples():
    """Everything a party receives in an AND layer is XOR-masked by fresh triple bits: across many runs on
    the same input, every bit of the openings is 1 about half the time."""
    x = np.zeros(640, dtype=np.uint64)
    seen = []
    for k in range(40):
        x0, x1 = split(x, k)
        C.run_pair(C.msb(0, x0, C.AndSource.for_party(0, f"t{k}", 744 * 10, bytes(16))),
                   C.msb(1, x1, C.AndSource.for_party(1, f"t{k}", 744 * 10, bytes(16).replace(b"\0", b"\1"),
                                                      np.zeros(7440, np.uint64))),
                   on_round=lambda o0, o1: seen.append(o1))
    bits = np.unpackbits(np.concatenate([s.ravel() for s in seen]).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_bad_openings_and_exhausted_triples_are_refused():
    src = C.AndSource.for_party(0, "t", 1, bytes(16))
    gen = C.and_gate(0, np.zeros(1, np.uint64), np.zeros(1, np.uint64), src)
    next(gen)
    with pytest.raises(ValueError, match="AND opening must be uint64"):
        gen.send(np.zeros((2, 3), np.uint64))
    with pytest.raises(ValueError, match="bit triples exhausted"):
        src.take((1,))
    with pytest.raises(ValueError, match="c1 of shape"):
        C.AndSource.for_party(1, "t", 4, bytes(16), np.zeros(3, np.uint64))


def test_costs_are_what_the_docstring_says():
    m = 64 * 10
    _, lt_words = run(lambda p, s: C.less_than_public(p, np.zeros(m, np.uint64), 5, s))
    words, rounds = arith.count_words(lambda p, s: C.less_than_public(p, np.zeros(m, np.uint64), 5, s))
    assert rounds == 7 and words == lt_words
    per_value_gates = words * 64 / m
    assert 5 * 64 <= per_value_gates <= 6 * 64
