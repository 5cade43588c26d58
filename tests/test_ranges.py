"""Each circuit on shares at the edge of the range docs/ranges.md states for it, and just past it.

At the edge: a Byzantine worker sends exact ring words with norm exactly b (the validity check's bound), so
the circuit sees the largest value the table allows (a distance (2b)^2, a coordinate +-b, cclip's
(b + ||v||)^2); the round must equal its twin. Just past it: norm b + 1 (one scaled unit), which the check
must reject in both paths, so no circuit ever sees a value past its range."""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.primitives import ring

B = 1 << 27          # the default bound in scaled units (frac_bits 20)
D = 6
FAMILIES = [("krum", "weights"), ("multi-krum", "aggregate"), ("mda", "weights"), ("norm-clip", "weights"),
            ("cclip", "aggregate"), ("median", "aggregate"), ("trimmed-mean", "aggregate"), ("bulyan", "aggregate")]


def _edge_rows(value: int) -> dict[int, np.ndarray]:
    """Workers 0 and 1 at +-value on coordinate 0: norms value, distance (2 value)^2, coordinates +-value."""
    rows = {}
    for i, sign in ((0, 1), (1, -1)):
        row = np.zeros(D, dtype=np.int64)
        row[0] = sign * value
        rows[i] = row.view(np.uint64)
    return rows


def _run_both(rule: str, reveal: str, rows: dict[int, np.ndarray], **options):
    n = 11 if rule == "bulyan" else 7
    x = np.random.default_rng(1).normal(0, 1, (n, D))
    x *= (0.3 / np.linalg.norm(x, axis=1))[:, None]
    got = secrobust.aggregate(x, rule, 1 if rule != "bulyan" else 2, reveal=reveal, ring_rows=rows,
                              insecure_test_seed=2, **options)
    twin = secrobust.plain_aggregate(x, rule, 1 if rule != "bulyan" else 2, reveal=reveal, ring_rows=rows,
                                     insecure_test_seed=2, **options)
    return got, twin


@pytest.mark.parametrize("rule,reveal", FAMILIES)
def test_each_circuit_at_the_edge_of_its_range_equals_the_twin(rule: str, reveal: str) -> None:
    got, twin = _run_both(rule, reveal, _edge_rows(B))
    assert got.rejected == {} == twin.rejected
    assert np.array_equal(got.aggregate, twin.aggregate)
    if got.weights is not None:
        assert np.array_equal(got.weights, twin.weights)


@pytest.mark.parametrize("rule,reveal", FAMILIES)
def test_one_unit_past_the_range_is_rejected_before_any_circuit(rule: str, reveal: str) -> None:
    got, twin = _run_both(rule, reveal, _edge_rows(B + 1))
    assert set(got.rejected) == {0, 1} == set(twin.rejected)
    assert np.array_equal(got.aggregate, twin.aggregate)


def test_cclip_at_b_plus_the_centers_norm() -> None:
    """||x - v|| = b + ||v|| exactly, with ||v|| = 3b: the clip circuit's nmax, reached and not passed."""
    from secrobust.circuits import validity

    b = validity.scaled_bound(0.5, 20, D)
    center = np.zeros(D)
    center[0] = 3 * b / 2.0**20
    x = np.random.default_rng(3).normal(0, 1, (7, D))
    x *= (0.3 / np.linalg.norm(x, axis=1))[:, None]
    for value, rejected in ((b, set()), (b + 1, {0})):
        rows = {0: (np.array([-value] + [0] * (D - 1), dtype=np.int64)).view(np.uint64)}
        for reveal in ("weights", "aggregate"):
            got = secrobust.aggregate(x, "cclip", 1, center=center, reveal=reveal, ring_rows=rows, norm_bound=0.5,
                                      tau=0.2, insecure_test_seed=4)
            twin = secrobust.plain_aggregate(x, "cclip", 1, center=center, reveal=reveal, ring_rows=rows,
                                             norm_bound=0.5, tau=0.2, insecure_test_seed=4)
            assert set(got.rejected) == rejected == set(twin.rejected)
            assert np.array_equal(got.aggregate, twin.aggregate)


def test_the_tighter_bound_is_the_range_too() -> None:
    """With norm_bound C the range is b = ceil(C 2^F + sqrt(d)/2): at b accepted, at b + 1 rejected."""
    from secrobust.circuits import validity

    b = validity.scaled_bound(0.5, 20, D)
    for value, rejected in ((b, set()), (b + 1, {0, 1})):
        got, twin = _run_both("krum", "weights", _edge_rows(value), norm_bound=0.5)
        assert set(got.rejected) == rejected == set(twin.rejected)
        assert np.array_equal(got.aggregate, twin.aggregate)
    assert ring.max_norm(20, D) > 0.5
