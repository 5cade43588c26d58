"""The launcher's cheap input check decides exactly as the encoder does, with the encoder's message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secrobust.primitives import ring
from secrobust.updates import check_updates, encode_updates


def _outcome(fn, *args):
    try:
        fn(*args)
    except ValueError as exc:
        return str(exc)
    return None


def _rows(data, n: int, d: int, f: int) -> np.ndarray:
    limit = ring.max_norm(f, d)
    x = np.empty((n, d))
    for i in range(n):
        kind = data.draw(st.sampled_from(["small", "at", "just-above", "far-above", "nan", "inf", "edge-scaled"]))
        v = np.asarray(data.draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d)), dtype=np.float64)
        v = v if np.linalg.norm(v) > 0 else np.ones(d)
        v = v / np.linalg.norm(v)
        if kind == "small":
            x[i] = v * limit * 0.5
        elif kind == "at":
            x[i] = v * limit
        elif kind == "just-above":
            x[i] = v * limit * (1 + 1e-9)
        elif kind == "far-above":
            x[i] = v * limit * 3
        elif kind == "edge-scaled":                      # the encoder's own boundary: 2^27 after rounding
            x[i] = v * ring.SCALED_NORM_BOUND / 2.0**f
        else:
            x[i] = v * limit * 0.5
            x[i, data.draw(st.integers(0, d - 1))] = np.nan if kind == "nan" else np.inf
    return x


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), d=st.integers(1, 12), f=st.sampled_from([0, 8, 20, 28]))
def test_check_updates_raises_exactly_what_encoding_raises(data, n, d, f):
    x = _rows(data, n, d, f)
    unchecked = frozenset(data.draw(st.sets(st.integers(0, n - 1), max_size=n)))
    assert _outcome(check_updates, x, f, unchecked) == _outcome(encode_updates, x, f, unchecked)
    assert _outcome(ring.check_encodable, x, f) == _outcome(ring.encode, x, f)


@pytest.mark.parametrize("d", [1, 1000, 300_000])
def test_rows_at_the_bound_in_high_dimension_agree(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(3, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[0] *= ring.max_norm(20, d)
    x[1] *= ring.SCALED_NORM_BOUND / 2.0**20 * (1 + 1e-7)
    x[2] *= ring.max_norm(20, d) * 0.99
    assert _outcome(ring.check_encodable, x, 20) == _outcome(ring.encode, x, 20)
    assert _outcome(ring.check_encodable, x[[0, 2]], 20) is None
