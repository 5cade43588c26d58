"""Additive secret sharing in Z_2^64, plain and seed-compressed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secrobust.primitives import prg, sharing
from secrobust.protocol import messages as M
from secrobust.protocol.worker import share_update, worker_name

SEED = bytes(range(16))
seeds = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32))
words = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
ring_arrays = hnp.arrays(np.uint64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), elements=words)
ring_vectors = hnp.arrays(np.uint64, st.integers(1, 40), elements=words)


@settings(max_examples=80, deadline=None)
@given(x=ring_arrays, seed=seeds, purpose=st.text(max_size=10))
def test_share_then_reconstruct_is_the_identity(x, seed, purpose):
    # Execute
    s0, s1 = sharing.share(x, seed, purpose)
    back = sharing.reconstruct(s0, s1)
    # Assert
    assert s0.shape == s1.shape == x.shape and s0.dtype == s1.dtype == np.uint64
    np.testing.assert_array_equal(back, x)
    np.testing.assert_array_equal(s0.ravel(), prg.ring_stream(seed, purpose, x.size))


@settings(max_examples=80, deadline=None)
@given(x=ring_vectors, seed=seeds, data=st.data())
def test_a_compressed_share_reconstructs_over_any_column_window(x, seed, data):
    # Prepare
    start = data.draw(st.integers(0, x.size))
    stop = data.draw(st.integers(start, x.size))
    # Execute
    sent_seed, masked = sharing.share_compressed(x, seed, "share|0|worker|1")
    window = sharing.expand_share(sent_seed, "share|0|worker|1", start, stop)
    # Assert
    assert sent_seed == bytes(seed)
    assert window.shape == (stop - start,)
    np.testing.assert_array_equal(sharing.reconstruct(window, masked[start:stop]), x[start:stop])


@settings(max_examples=80, deadline=None)
@given(x=ring_vectors, data=st.data(), seed=seeds)
def test_each_share_alone_is_independent_of_the_secret(x, data, seed):
    # Prepare: a second secret of the same shape
    y = data.draw(hnp.arrays(np.uint64, x.shape, elements=words))
    # Execute
    x0, x1 = sharing.share(x, seed, "p")
    y0, y1 = sharing.share(y, seed, "p")
    # Assert: S0's share does not depend on the secret at all; S1's share is the secret shifted by a
    # one-time pad that does not depend on it, so x1 - y1 == x - y exactly
    np.testing.assert_array_equal(x0, y0)
    np.testing.assert_array_equal(x1 - y1, x - y)
    np.testing.assert_array_equal(x1 - x, y1 - y)


def test_different_purposes_give_different_pads():
    x = np.arange(8, dtype=np.uint64)
    a0, _ = sharing.share(x, SEED, "share|0|worker|1")
    b0, _ = sharing.share(x, SEED, "share|0|worker|2")
    c0, _ = sharing.share(x, SEED, "share|1|worker|1")
    assert not np.array_equal(a0, b0) and not np.array_equal(a0, c0)


@pytest.mark.parametrize("a,b", [((3,), (4,)), ((2, 3), (3, 2)), ((), (1,)), ((0,), (1,))])
def test_reconstruct_rejects_a_shape_mismatch(a, b):
    with pytest.raises(ValueError, match="shares have different shapes"):
        sharing.reconstruct(np.zeros(a, dtype=np.uint64), np.zeros(b, dtype=np.uint64))


def test_share_compressed_refuses_a_bad_seed():
    with pytest.raises(ValueError, match="16 or 32 bytes"):
        sharing.share_compressed(np.zeros(3, dtype=np.uint64), bytes(8), "p")


@settings(max_examples=40, deadline=None)
@given(x=ring_vectors, master=st.binary(min_size=16, max_size=16), pos=st.integers(0, 1000),
       r=st.integers(0, 1000), w=st.integers(0, 1000))
def test_the_worker_masks_with_the_key_s0_hands_out_and_sends_only_to_s1(x, master, pos, r, w):
    # Execute: S0's share is the row of the dealer's mask A0 keyed by the worker's plan position
    key = sharing.input_key(master, pos)
    to_s1 = share_update(r, w, x, key)
    # Assert: S1 gets x - A0_pos; with S0's row they give x back
    assert (to_s1.kind, to_s1.recipient, to_s1.sender) == (M.SHARE_MASKED, "S1", worker_name(w))
    assert to_s1.fields == {"worker": w}
    x0 = sharing.input_rows(master, [pos], 0, x.size)[0]
    np.testing.assert_array_equal(sharing.reconstruct(x0, to_s1.arrays["x1"]), x)


def test_input_keys_differ_per_position_and_master():
    keys = {sharing.input_key(m, i) for m in (SEED, bytes(16)) for i in range(50)}
    assert len(keys) == 100


def test_input_rows_read_any_column_range_of_the_same_stream():
    full = sharing.input_rows(SEED, [3, 0], 0, 100)
    np.testing.assert_array_equal(sharing.input_rows(SEED, [3, 0], 37, 61), full[:, 37:61])
    np.testing.assert_array_equal(full[1], prg.ring_stream(sharing.input_key(SEED, 0), sharing.INPUT_PURPOSE, 100))


@pytest.mark.parametrize("bad", [np.zeros(3, dtype=np.int64), np.zeros((2, 2), dtype=np.uint64), np.zeros(3)])
def test_a_worker_shares_only_one_uint64_vector(bad):
    with pytest.raises(ValueError, match="one encoded uint64 vector"):
        share_update(0, 1, bad, SEED)
