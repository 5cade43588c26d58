"""Properties of the ring Z_2^64 and its fixed-point encoding (docs/protocol.md, Arithmetic)."""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from secrobust.primitives import ring

M64 = 2**64
SPECIAL_WORDS = [0, 1, 2, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]
words = st.one_of(st.sampled_from(SPECIAL_WORDS), st.integers(0, M64 - 1))
frac_bits = st.integers(0, 28)


def signed(u: int) -> int:
    return u - M64 if u >= 2**63 else u


@st.composite
def direction(draw, max_d=8):
    """A unit vector (or the zero vector) of random dimension."""
    d = draw(st.integers(1, max_d))
    v = np.array(draw(st.lists(st.floats(-1, 1, allow_subnormal=False), min_size=d, max_size=d)))
    norm = float(np.linalg.norm(v))
    # tiny norms would leave v / norm visibly off the unit sphere: use the zero vector instead
    return v / norm if norm > 1e-150 else np.zeros(d)


# --- encode / decode ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(u=direction(), t=st.floats(0, 1 - 1e-9), f=frac_bits)
def test_round_trip_is_within_half_a_unit_per_coordinate(u, t, f):
    # Prepare: a vector strictly inside the guaranteed range max_norm(F, d)
    x = u * t * ring.max_norm(f, u.size)
    # Execute
    enc = ring.encode(x, f)
    back = ring.decode(enc, f)
    # Assert
    assert enc.dtype == np.uint64 and enc.shape == x.shape
    assert np.all(np.abs(back - x) <= 2.0 ** -(f + 1))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(1, 6), f=frac_bits, seed=st.integers(0, 2**32 - 1))
def test_encode_of_a_matrix_is_row_by_row_encode(n, d, f, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, d)) * ring.max_norm(f, d) / math.sqrt(d)
    enc = ring.encode(x, f)
    assert enc.shape == (n, d)
    for i in range(n):
        np.testing.assert_array_equal(enc[i], ring.encode(x[i], f))


def test_encoding_is_round_half_to_even_times_two_to_the_f():
    x = np.array([0.5, 1.5, -0.5, -2.5, 3.25, -3.75])
    assert ring.to_signed(ring.encode(x, 0)).tolist() == [0, 2, 0, -2, 3, -4]
    assert ring.to_signed(ring.encode(x, 2)).tolist() == [2, 6, -2, -10, 13, -15]


@pytest.mark.parametrize("f", [0, 1, 20, 28])
@pytest.mark.parametrize("d", [1, 2, 4, 9, 100])
def test_exactly_at_the_bound_is_accepted(f, d):
    # an axis vector of norm max_norm(F, d), an all-equal vector of that norm, and a vector whose
    # scaled, rounded norm is exactly 2^27 (the enforced bound)
    mn = ring.max_norm(f, d)
    axis = np.zeros(d)
    axis[0] = mn
    flat = np.full(d, mn / math.sqrt(d))
    exact = np.zeros(d)
    exact[0] = 2.0**27 / 2.0**f
    for x in (axis, flat, exact):
        enc = ring.encode(x, f)
        assert np.sqrt(np.sum(ring.to_signed(enc).astype(np.float64) ** 2)) <= 2.0**27


def test_max_norm_formula():
    assert ring.max_norm(0, 1) == 2.0**27 - 0.5
    assert ring.max_norm(20, 16) == (2.0**27 - 2.0) / 2.0**20
    assert ring.max_norm() == ring.max_norm(ring.DEFAULT_FRAC_BITS, 1)


@settings(max_examples=60, deadline=None)
@given(u=direction(), f=frac_bits, n=st.integers(1, 4), data=st.data())
def test_norm_just_above_the_bound_is_refused_naming_the_row(u, f, n, data):
    # Prepare: n good rows, and row i has norm max_norm + (sqrt(d) + 1) / 2^F, the smallest real norm
    # at which the rounded, scaled norm surely exceeds 2^27 (max_norm is the guaranteed-accept bound).
    assume(np.linalg.norm(u) > 0.5)  # a unit vector, not the zero vector
    d = u.size
    i = data.draw(st.integers(0, n - 1))
    x = np.zeros((n, d))
    x[:] = u * 0.5 * ring.max_norm(f, d)
    x[i] = u * (ring.max_norm(f, d) + (math.sqrt(d) + 1) / 2.0**f)
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"^update {i} has L2 norm .* above the encoder's range"):
        ring.encode(x, f)


@pytest.mark.parametrize("f", [0, 20, 28])
def test_one_unit_above_the_enforced_bound_is_refused(f):
    x = np.array([(2.0**27 + 1) / 2.0**f, 0.0])
    with pytest.raises(ValueError, match=r"update 0 has L2 norm"):
        ring.encode(x, f)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 2])
def test_non_finite_values_are_refused_naming_the_row(bad, row):
    x = np.zeros((3, 4))
    x[row, 1] = bad
    with pytest.raises(ValueError, match=rf"^update {row} contains NaN or inf"):
        ring.encode(x, 20)


def test_huge_finite_values_are_refused_not_wrapped():
    with pytest.raises(ValueError, match="update 0 has L2 norm"):
        ring.encode(np.array([1e300, 1.0]), 20)


def test_encode_refuses_more_than_two_dimensions():
    with pytest.raises(ValueError, match=r"vector or an \(n, d\) matrix"):
        ring.encode(np.zeros((2, 2, 2)), 20)


# --- ring arithmetic ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(words, words), min_size=1, max_size=8))
def test_add_sub_mul_wrap_mod_2_64(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.uint64)
    b = np.array([p[1] for p in pairs], dtype=np.uint64)
    assert [int(v) for v in a + b] == [(x + y) % M64 for x, y in pairs]
    assert [int(v) for v in a - b] == [(x - y) % M64 for x, y in pairs]
    assert [int(v) for v in a * b] == [(x * y) % M64 for x, y in pairs]
    assert [int(v) for v in -a] == [(-x) % M64 for x, _ in pairs]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), m=st.integers(1, 4), d=st.integers(1, 5), data=st.data())
def test_ring_matmul_t_is_exact_mod_2_64(n, m, d, data):
    a = [[data.draw(words) for _ in range(d)] for _ in range(n)]
    b = [[data.draw(words) for _ in range(d)] for _ in range(m)]
    got = ring.ring_matmul_t(np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64))
    want = [[sum(x * y for x, y in zip(ra, rb)) % M64 for rb in b] for ra in a]
    assert got.dtype == np.uint64
    assert got.tolist() == want


@settings(max_examples=150, deadline=None)
@given(vals=st.lists(words, min_size=1, max_size=10))
def test_to_signed_is_twos_complement(vals):
    s = ring.to_signed(np.array(vals, dtype=np.uint64))
    assert s.dtype == np.int64
    assert s.tolist() == [signed(v) for v in vals]


@settings(max_examples=150, deadline=None)
@given(f=frac_bits, a=st.floats(-1, 1), b=st.floats(-1, 1))
def test_decode_of_a_product_at_scale_2f_is_the_real_product(f, a, b):
    # Prepare: two scalars in range; their encodings A, B have |A|, |B| <= 2^27, so |AB| <= 2^60
    bound = ring.max_norm(f, 1)
    x, y = a * bound, b * bound
    ex, ey = ring.encode(np.array([x]), f), ring.encode(np.array([y]), f)
    # Execute: the product in the ring, decoded with scale 2F
    got = ring.decode(ex * ey, 2 * f)[0]
    # Assert: |x 2^F - X| <= 1/2, so |XY / 2^2F - xy| <= (|x| + |y|) / 2^(F+1) + 2^-(2F+2)
    # (checked exactly, with rationals, so float rounding of x * y does not blur the bound)
    exact = Fraction(signed(int((ex * ey)[0])), 2 ** (2 * f))
    tol = (abs(Fraction(x)) + abs(Fraction(y))) / 2 ** (f + 1) + Fraction(1, 2 ** (2 * f + 2))
    assert abs(exact - Fraction(x) * Fraction(y)) <= tol
    assert got == float(exact)


def test_decode_reads_the_top_half_of_the_ring_as_negative():
    r = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert ring.decode(r, 0).tolist() == [0.0, 1.0, float(2**63 - 1), -(2.0**63), -1.0]
    assert ring.decode(np.array([3 << 20], dtype=np.uint64), 20).tolist() == [3.0]


# --- weights and parameters --------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(w=st.lists(st.floats(-4, 4), min_size=1, max_size=6))
def test_encode_weights_is_round_w_times_2_32(w):
    enc = ring.encode_weights(np.array(w))
    assert enc.dtype == np.uint64
    assert ring.to_signed(enc).tolist() == [round(v * 2**32) for v in w]
    assert np.all(np.abs(ring.decode(enc, ring.WEIGHT_FRAC_BITS) - np.array(w)) <= 2.0**-33)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_weights_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="weights must be finite"):
        ring.encode_weights(np.array([0.5, bad]))


@pytest.mark.parametrize("w", [2.0**32, -(2.0**33), 1e30])
def test_encode_weights_out_of_int64_range_is_refused_or_exact_mod_2_64(w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            enc = ring.encode_weights(np.array([w]))
        except ValueError:
            return
    assert int(enc[0]) == round(w * 2**32) % M64


@pytest.mark.parametrize("ok", [0, 1, 20, 28, np.int64(12)])
def test_check_frac_bits_accepts_integers_in_range(ok):
    ring.check_frac_bits(ok)


@pytest.mark.parametrize("bad", [-1, 29, 64, 20.0, 1.5, "20", None, np.float64(3)])
def test_check_frac_bits_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r"frac_bits must be an integer in \[0, 28\]"):
        ring.check_frac_bits(bad)
    with pytest.raises(ValueError, match="frac_bits"):
        ring.encode(np.zeros(2), bad)


@pytest.mark.parametrize("bad", [True, False])
def test_check_frac_bits_rejects_bools(bad):
    with pytest.raises(ValueError):
        ring.check_frac_bits(bad)


# --- the unchecked (Byzantine) encoder -----------------------------------------------------------

def test_encode_unchecked_saturates_large_values():
    x = np.array([1e300, -1e300, 1.5])
    got = ring.to_signed(ring.encode_unchecked(x, 20))
    assert got.tolist() == [2**62, -(2**62), 3 << 19]


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_encode_unchecked_refuses_non_finite_values_naming_row_and_entry(bad, what):
    x = np.zeros((3, 4))
    x[2, 1] = bad
    with pytest.raises(ValueError, match=rf"^update 2 contains {what} \(entry 1\); an unchecked update must be finite"):
        ring.encode_unchecked(x, 20)
    with pytest.raises(ValueError, match=rf"^update contains {what} \(entry 1\)"):
        ring.encode_unchecked(x[2], 20)


@settings(max_examples=80, deadline=None)
@given(u=direction(), t=st.floats(0, 1 - 1e-9), f=frac_bits)
def test_encode_unchecked_agrees_with_encode_inside_the_range(u, t, f):
    x = u * t * ring.max_norm(f, u.size)
    np.testing.assert_array_equal(ring.encode_unchecked(x, f), ring.encode(x, f))


def test_unchecked_vectors_make_squared_distances_wrap():
    # Prepare: a Byzantine row at 2^62 (scaled) and an honest row at the origin
    f = 20
    x_bad = ring.encode_unchecked(np.array([2.0 ** (62 - f), 0.0]), f)
    x_good = ring.encode(np.zeros(2), f)
    diff = x_bad - x_good
    # Execute: the squared distance as the protocol computes it, in the ring
    d_ring = ring.decode(np.array([np.sum(diff * diff)], dtype=np.uint64), 2 * f)[0]
    # Assert: the true squared distance is 2^124 / 2^40 = 2^84, the ring says 0 (2^124 mod 2^64)
    true = sum(int(v) ** 2 for v in ring.to_signed(diff)) / 2.0 ** (2 * f)
    assert true == 2.0**84
    assert d_ring == 0.0


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.floats(-1e15, 1e15), min_size=1, max_size=6), f=frac_bits)
def test_unchecked_squared_norm_is_exact_mod_2_64_and_wraps_when_large(x, f):
    enc = ring.encode_unchecked(np.array(x), f)
    exact = sum(int(v) ** 2 for v in ring.to_signed(enc))
    ring_value = int(np.sum(enc * enc, dtype=np.uint64))
    assert ring_value == exact % M64
    # the decoder reads the signed representative: right iff the exact value is below 2^63
    assert (signed(ring_value) == exact) == (exact < 2**63)
