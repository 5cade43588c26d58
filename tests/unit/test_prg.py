"""Seeds, keystreams and domain separation (docs/protocol.md, Randomness)."""

import hashlib
import hmac

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from secrobust.primitives import prg, sharing

SEED = bytes(range(16))
SEED32 = bytes(range(100, 132))
seeds = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32))
labels = st.text(max_size=20)


def test_keystream_is_aes128_ctr_under_the_hmac_derived_key():
    # Prepare: the construction written out independently of prg.py (module docstring)
    key = hmac.new(SEED, b"secrobust/v1|" + bytes([len(SEED)]) + b"key|" + "share|3|worker|1".encode(), hashlib.sha256).digest()[:16]
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    want = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(4))
    # Execute
    got = prg.keystream(SEED, "share|3|worker|1", 64)
    # Assert
    assert prg.derive_key(SEED, "share|3|worker|1") == key
    assert got == want


@settings(max_examples=50, deadline=None)
@given(seed=seeds, purpose=labels, n=st.integers(0, 40))
def test_same_seed_and_label_give_the_same_stream(seed, purpose, n):
    a = prg.ring_stream(seed, purpose, n)
    b = prg.ring_stream(bytes(seed), purpose, n)
    assert a.dtype == np.uint64 and a.shape == (n,)
    np.testing.assert_array_equal(a, b)
    assert prg.keystream(seed, purpose, 8 * n) == a.astype("<u8").tobytes()


@settings(max_examples=50, deadline=None)
@given(seed=seeds, l1=labels, l2=labels)
def test_different_labels_give_different_streams(seed, l1, l2):
    if l1 == l2:
        return
    assert prg.derive_key(seed, l1) != prg.derive_key(seed, l2)
    assert prg.keystream(seed, l1, 32) != prg.keystream(seed, l2, 32)


@settings(max_examples=50, deadline=None)
@given(n=st.sampled_from([16, 32]), data=st.data(), purpose=labels)
def test_different_seeds_give_different_streams(n, data, purpose):
    s1 = data.draw(st.binary(min_size=n, max_size=n))
    s2 = data.draw(st.binary(min_size=n, max_size=n))
    if s1 == s2:
        return
    assert prg.keystream(s1, purpose, 32) != prg.keystream(s2, purpose, 32)


def test_a_16_byte_seed_and_its_zero_padded_32_byte_form_give_different_streams():
    assert prg.keystream(SEED, "p", 32) != prg.keystream(SEED + bytes(16), "p", 32)


def test_label_joins_parts_and_separates_purposes():
    assert prg.label("share", 7, "worker", 3) == "share|7|worker|3"
    streams = {prg.keystream(SEED, prg.label("share", r, "worker", w), 16) for r in range(3) for w in range(3)}
    assert len(streams) == 9


@settings(max_examples=80, deadline=None)
@given(offset=st.integers(0, 130), count=st.integers(0, 40), purpose=labels)
def test_ring_stream_random_access_equals_a_slice_of_the_full_stream(offset, count, purpose):
    full = prg.ring_stream(SEED, purpose, offset + count)
    part = prg.ring_stream(SEED, purpose, count, offset)
    assert part.shape == (count,)
    np.testing.assert_array_equal(part, full[offset:])


@settings(max_examples=80, deadline=None)
@given(offset=st.integers(0, 300), nbytes=st.integers(0, 70), seed=seeds)
def test_keystream_byte_offsets_equal_a_slice_of_the_full_stream(offset, nbytes, seed):
    full = prg.keystream(seed, "p", offset + nbytes)
    assert prg.keystream(seed, "p", nbytes, offset) == full[offset:]


def test_random_access_far_into_the_stream_crosses_counter_blocks():
    # word 2^20 + 1 sits at byte 8 of block 2^19; an odd word offset starts mid-block
    full = prg.ring_stream(SEED, "far", (1 << 20) + 3)
    np.testing.assert_array_equal(prg.ring_stream(SEED, "far", 2, (1 << 20) + 1), full[-2:])


@pytest.mark.parametrize("count", [(prg._PIECE // 8) * m + r for m in (1, 2) for r in (-2, -1, 0, 1, 2)])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_ring_stream_equals_the_byte_keystream_at_piece_boundaries(count, offset):
    # pieces are encrypted straight into the output; the last one (within a block of the end) is copied
    want = np.frombuffer(prg.keystream(SEED, "piece", 8 * count, 8 * offset), dtype="<u8")
    np.testing.assert_array_equal(prg.ring_stream(SEED, "piece", count, offset), want)


@pytest.mark.parametrize("count", [0, 1, 5] + [(prg._PIECE // 8) * m + r for m in (1, 2) for r in (-1, 0, 1)])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_subtracting_the_stream_in_place_equals_subtracting_its_words(count, offset):
    x = np.random.default_rng(count).integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)
    want = x - prg.ring_stream(b"w" * 16, "sub", count, offset)
    prg.subtract_ring_stream(b"w" * 16, "sub", x, offset)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("sizes", [[1, 1, 1], [3, 5, 2], [prg._PIECE // 8 + 1, 3, prg._PIECE // 8 - 1]])
def test_a_ring_stream_read_in_parts_is_the_whole_stream(sizes):
    stream, parts = prg.RingStream(SEED, "parts", 3), []
    for k, size in enumerate(sizes):
        part = np.zeros(size, dtype=np.uint64)
        if k % 2:
            stream.subtract_from(part)
            part = -part
        else:
            stream.fill(part)
        parts.append(part)
    np.testing.assert_array_equal(np.concatenate(parts), prg.ring_stream(SEED, "parts", sum(sizes), 3))


def test_ring_rows_row_i_is_the_row_labelled_stream():
    rows = prg.ring_rows(SEED, "mask", 3, 5, 9)
    assert rows.shape == (3, 4)
    for i in range(3):
        np.testing.assert_array_equal(rows[i], prg.ring_stream(SEED, f"mask|row|{i}", 4, 5))


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytes(31), bytes(33), bytes(64), "x" * 16, None, 16])
def test_seeds_of_the_wrong_length_or_type_are_rejected(bad):
    for call in (lambda: prg.check_seed(bad), lambda: prg.derive_key(bad, "p"), lambda: prg.keystream(bad, "p", 8),
                 lambda: prg.ring_stream(bad, "p", 1), lambda: prg.derive_seed(bad, "p"),
                 lambda: sharing.share(np.zeros(2, dtype=np.uint64), bad, "p")):
        with pytest.raises(ValueError, match="a seed must be 16 or 32 bytes"):
            call()


def test_32_byte_seeds_and_bytearrays_are_accepted():
    assert prg.check_seed(bytearray(SEED)) == SEED
    assert prg.keystream(SEED32, "p", 16) != prg.keystream(SEED32[:16], "p", 16)


@pytest.mark.parametrize("nbytes,offset", [(-1, 0), (0, -1)])
def test_negative_keystream_lengths_and_offsets_are_rejected(nbytes, offset):
    with pytest.raises(ValueError, match="non-negative"):
        prg.keystream(SEED, "p", nbytes, offset)


def test_fresh_seeds_have_the_right_length_and_do_not_repeat():
    many = [prg.fresh_seed() for _ in range(2000)]
    assert all(isinstance(s, bytes) and len(s) == prg.SEED_BYTES == 16 for s in many)
    assert len(set(many)) == len(many)
    assert len(prg.fresh_seed(32)) == 32


@pytest.mark.parametrize("n", [0, 8, 15, 24, 64])
def test_fresh_seed_refuses_other_lengths(n):
    with pytest.raises(ValueError, match="16 or 32"):
        prg.fresh_seed(n)


def test_derive_seed_is_deterministic_labelled_and_distinct_from_the_key():
    a = prg.derive_seed(SEED, "run|1")
    assert a == prg.derive_seed(SEED, "run|1") and len(a) == 16
    assert a != prg.derive_seed(SEED, "run|2")
    assert a != prg.derive_key(SEED, "run|1")


@settings(max_examples=50, deadline=None)
@given(seed=seeds, purpose=labels)
def test_no_label_makes_a_key_equal_a_child_seed(seed, purpose):
    # the old construction gave derive_key(s, "seed|" + p) == derive_seed(s, p)
    assert prg.derive_key(seed, "seed|" + purpose) != prg.derive_seed(seed, purpose)
    assert prg.derive_seed(seed, "key|" + purpose) != prg.derive_key(seed, purpose)


def _byte_chi2_p(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def test_keystream_bytes_pass_a_chi_square_uniformity_test():
    # fixed seed, so the outcome is deterministic; 2^20 bytes, 255 degrees of freedom
    data = prg.keystream(SEED, "chi2", 1 << 20)
    assert _byte_chi2_p(data) > 1e-3
    top = (prg.ring_stream(SEED, "chi2-words", 1 << 16) >> np.uint64(56)).astype(np.uint8).tobytes()
    assert _byte_chi2_p(top) > 1e-3


def test_the_chi_square_check_can_fail():
    # a stream with a 1% bias towards byte 0 is caught
    data = bytearray(prg.keystream(SEED, "chi2", 1 << 20))
    data[:: 100] = bytes(len(data[::100]))
    assert _byte_chi2_p(bytes(data)) < 1e-6


def test_gaussian_has_mean_zero_and_unit_std():
    z = prg.gaussian(SEED, "noise", 100_000)
    assert z.shape == (100_000,) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.02          # standard error 0.0032
    assert abs(z.std() - 1.0) < 0.02     # standard error 0.0022
    assert stats.kstest(z, "norm").pvalue > 1e-3


@pytest.mark.parametrize("count", [0, 1, 7, 10])
def test_gaussian_is_deterministic_and_has_the_asked_length(count):
    a = prg.gaussian(SEED, "noise", count)
    assert a.shape == (count,)
    np.testing.assert_array_equal(a, prg.gaussian(SEED, "noise", count))
    assert not np.array_equal(prg.gaussian(SEED, "other", 10), prg.gaussian(SEED, "noise", 10))
