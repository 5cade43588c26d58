"""The ring kernel equals NumPy's wrapping uint64 product (and Python integers mod 2^64) at every tile and block
boundary, for any view of the operands, with any thread count."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secrobust.primitives import kernel as rk

B, R = rk.BLOCK_COLS, rk.TILE
EDGE = np.array([0, 1, 2**63, 2**64 - 1, 2**63 - 1, 2**32, 2**32 - 1], dtype=np.uint64)
words = st.one_of(st.sampled_from([int(v) for v in EDGE]), st.integers(0, 2**64 - 1))


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    rk.set_threads(request.param)
    yield request.param
    rk.set_threads(None)


def full_range(rng, shape):
    x = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    x.ravel()[: EDGE.size * 3] = np.tile(EDGE, 3)[: min(x.size, EDGE.size * 3)]
    return x


@pytest.mark.parametrize("k", [0, 1, B - 1, B, B + 1, 2 * B + 3, 3 * B])
@pytest.mark.parametrize("n,m", [(1, 1), (R - 1, R + 1), (R, 2 * R + 3), (2 * R + 3, 1), (13, 50), (50, 16)])
def test_products_equal_numpy_across_block_boundaries(threads, n, m, k):
    rng = np.random.default_rng(n * 1000 + m * 10 + k)
    a, b = full_range(rng, (n, k)), full_range(rng, (m, k))
    np.testing.assert_array_equal(rk.matmul_t(a, b), np.matmul(a, b.T))
    np.testing.assert_array_equal(rk.gram(a), np.matmul(a, a.T))
    np.testing.assert_array_equal(rk.rowdot(a, a[::-1]), np.einsum("ij,ij->i", a, a[::-1]))


def test_all_ones_and_top_bit_words_wrap_exactly(threads):
    k = 2 * B + 1
    ones = np.full((R + 2, k), 2**64 - 1, dtype=np.uint64)
    top = np.full((3, k), 2**63, dtype=np.uint64)
    # (2^64 - 1)^2 = 1 mod 2^64, so a row of k of them sums to k; 2^63 * (2^64 - 1) = 2^63 mod 2^64
    assert (rk.gram(ones) == np.uint64(k)).all()
    assert (rk.matmul_t(top, ones) == np.uint64((2**63 * k) % 2**64)).all()
    assert (rk.rowdot(top, top) == 0).all()


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), m=st.integers(1, 12), k=st.integers(0, 40))
def test_small_products_equal_python_integers(data, n, m, k):
    a = data.draw(hnp.arrays(np.uint64, (n, k), elements=words))
    b = data.draw(hnp.arrays(np.uint64, (m, k), elements=words))
    want = [[sum(int(x) * int(y) for x, y in zip(ra, rb)) % 2**64 for rb in b] for ra in a]
    assert rk.matmul_t(a, b).tolist() == want
    gram = [[sum(int(x) * int(y) for x, y in zip(ra, rb)) % 2**64 for rb in a] for ra in a]
    assert rk.gram(a).tolist() == gram


@settings(max_examples=10, deadline=None)
@given(data=st.data(), n=st.integers(1, 9), extra=st.integers(-2, 2))
def test_products_across_a_column_block_equal_python_integers(data, n, extra):
    """Worst-case words (all ones, the top bit) and random ones over a whole column block and a few columns
    past it: sums of B + 2 products of 128-bit magnitude each, reduced mod 2^64 only at the end by Python."""
    k = B + extra
    a = data.draw(hnp.arrays(np.uint64, (n, k), elements=words))
    b = data.draw(hnp.arrays(np.uint64, (n, k), elements=words))
    ia, ib = a.astype(object), b.astype(object)
    assert rk.matmul_t(a, b).tolist() == [[int(v) % 2**64 for v in row] for row in ia.dot(ib.T)]


def test_column_views_and_non_contiguous_rows_are_accepted(threads):
    rng = np.random.default_rng(3)
    a = full_range(rng, (12, 3 * B))
    frozen = a.copy()
    frozen.flags.writeable = False
    unaligned = np.frombuffer(bytearray(1) + a[:5].tobytes(), dtype=np.uint64, offset=1).reshape(5, -1)
    assert not unaligned.flags.aligned  # as a message parsed from the network can be
    broadcast = np.broadcast_to(a[3], (6, a.shape[1]))
    for view in (a[::2, B - 5 : 2 * B + 7], a[:, ::3], a[::-1], np.asfortranarray(a[:7, :B + 3]), frozen, unaligned,
                 broadcast):
        np.testing.assert_array_equal(rk.gram(view), np.matmul(view, view.T))
        np.testing.assert_array_equal(rk.matmul_t(view, a[:5, : view.shape[1]]), np.matmul(view, a[:5, : view.shape[1]].T))
    np.testing.assert_array_equal(a, full_range(np.random.default_rng(3), (12, 3 * B)))


@pytest.mark.parametrize("a,b", [(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.uint64)),
                                 (np.zeros(3, np.uint64), np.zeros(3, np.uint64)),
                                 (np.zeros((2, 3), np.uint64), np.zeros((2, 4), np.uint64))])
def test_bad_operands_are_refused(a, b):
    with pytest.raises(ValueError):
        rk.matmul_t(a, b)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_thread_count_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="positive integer"):
        rk.set_threads(bad)


def test_warm_up_loads_the_kernel_for_both_operand_types():
    rk.warm_up()
    assert rk._compiled is not None
    assert {str(sig[3].dtype) for sig in rk._compiled.signatures} >= {"uint64", "int8"}


@pytest.mark.parametrize("k", [0, 1, B - 1, B, B + 1, 2 * B + 3])
@pytest.mark.parametrize("n,m", [(1, 1), (R - 1, R + 1), (13, 81)])
def test_products_by_int8_matrices_sign_extend_each_entry(threads, n, m, k):
    rng = np.random.default_rng(n * 1000 + m * 10 + k)
    a = full_range(rng, (n, k))
    b = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b.ravel()[:4] = [-128, -1, 127, 0][: b.size]
    want = np.matmul(a, b.astype(np.int64).view(np.uint64).T)
    np.testing.assert_array_equal(rk.matmul_t_int8(a, b), want)
    np.testing.assert_array_equal(rk.matmul_t_int8(a[:, ::-1], b[:, ::-1]), want)   # views, copied when strided


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 9), m=st.integers(1, 9), k=st.integers(0, 30))
def test_small_int8_products_equal_python_integers(data, n, m, k):
    a = data.draw(hnp.arrays(np.uint64, (n, k), elements=words))
    b = data.draw(hnp.arrays(np.int8, (m, k)))
    want = [[sum(int(x) * int(y) for x, y in zip(ra, rb)) % 2**64 for rb in b] for ra in a]
    assert rk.matmul_t_int8(a, b).tolist() == want


def test_int8_products_refuse_other_operands():
    a = np.zeros((2, 3), dtype=np.uint64)
    for bad in (np.zeros((2, 3), dtype=np.uint64), np.zeros((2, 4), dtype=np.int8), np.zeros(3, dtype=np.int8)):
        with pytest.raises(ValueError):
            rk.matmul_t_int8(a, bad)
