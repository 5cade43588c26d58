"""cclip on shares with a public center of any norm the encoder accepts (issue: guarantees where features meet).

The clip circuit's range is ||x_i - v||^2 <= (b + ||v||)^2 (``rules.view.view_range``); it used to assume
(2b)^2, which a center above the norm bound breaks: a Byzantine worker pointing away from the center passed
the validity check and got its unclipped weight, while the twin refused the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.primitives import ring
from secrobust.rules.view import view_range

MODES = ("distances", "weights", "aggregate")


def _exact_cclip(x: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """Centered clipping in float, written here and not taken from the engine (one iteration)."""
    y = x - v
    norms = np.linalg.norm(y, axis=1)
    factors = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
    return v + (factors[:, None] * y).mean(axis=0)


def _setting(center_scale: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    n, d, bound = 8, 40, 1.0
    x = rng.normal(0, 1, (n, d))
    x *= (0.9 * bound / np.linalg.norm(x, axis=1))[:, None]
    v = np.zeros(d)
    v[0] = center_scale * bound
    x[0] = 0.0
    x[0, 0] = -0.99 * bound   # the Byzantine row: inside the bound, as far from the center as it can be
    return x, v, bound


@pytest.mark.parametrize("reveal", MODES)
@pytest.mark.parametrize("center_scale", [0.5, 3.0, 6.0])
def test_cclip_with_a_large_center_equals_exact_centered_clipping(reveal: str, center_scale: float) -> None:
    x, v, bound = _setting(center_scale)
    tau = 0.5
    got = secrobust.aggregate(x, "cclip", 1, center=v, tau=tau, norm_bound=bound, reveal=reveal,
                              insecure_test_seed=3)
    twin = secrobust.plain_aggregate(x, "cclip", 1, center=v, tau=tau, norm_bound=bound, reveal=reveal,
                                     insecure_test_seed=3)
    assert np.array_equal(got.aggregate, twin.aggregate)
    if reveal != "aggregate":
        assert np.array_equal(got.weights, twin.weights)
    want = _exact_cclip(x, v, tau)
    # clip factors within 2^-25 relative, the encoding within 2^-20 per coordinate
    assert np.max(np.abs(got.aggregate - want)) < 1e-4
    if reveal == "weights":
        # the worker pointing away from the center is clipped, not given its unclipped weight 1/n
        assert got.weights[0] < 0.9 / x.shape[0]


@pytest.mark.parametrize("reveal", ("weights", "aggregate"))
@pytest.mark.parametrize("center_scale", [0.5, 3.0])
def test_cclip_median_tau_with_a_large_center_equals_its_twin(reveal: str, center_scale: float) -> None:
    x, v, bound = _setting(center_scale, seed=2)
    got = secrobust.aggregate(x, "cclip", 1, center=v, norm_bound=bound, reveal=reveal, insecure_test_seed=4)
    twin = secrobust.plain_aggregate(x, "cclip", 1, center=v, norm_bound=bound, reveal=reveal,
                                     insecure_test_seed=4)
    opened = secrobust.aggregate(x, "cclip", 1, center=v, norm_bound=bound, insecure_test_seed=4)
    assert np.array_equal(got.aggregate, twin.aggregate)
    if reveal == "weights":
        assert np.array_equal(got.weights, twin.weights)
        assert np.all(got.weights >= 0) and np.all(got.weights <= 1 / x.shape[0] + 1e-9)
    assert np.max(np.abs(got.aggregate - opened.aggregate)) < 1e-4


def test_view_range_grows_with_the_center_and_keeps_small_centers_unchanged() -> None:
    b = 1 << 20
    small = ring.encode(np.full(4, 0.1), 20)          # ||v|| 2^20 * 0.2 < b
    assert view_range(b, None) == (2 * b) ** 2
    assert view_range(b, small) == (2 * b) ** 2
    big = np.zeros(4, dtype=np.uint64)
    big[1] = np.uint64(5 * b)
    assert view_range(b, big) == (6 * b) ** 2


def test_view_range_refuses_a_center_past_the_clip_circuits_range() -> None:
    over = np.zeros(3, dtype=np.uint64)
    over[0] = np.uint64(1 << 30)
    with pytest.raises(ValueError, match="beyond the clip circuit's range"):
        view_range(1 << 27, over)
    with pytest.raises(ValueError, match="not an honest encoding"):
        view_range(1 << 27, np.full(2, 1 << 40, dtype=np.uint64))


def test_cclip_at_the_encoders_edge_center_and_default_bound() -> None:
    """The largest center and bound the encoder accepts: (b + ||v||)^2 just above 2^56, still exact."""
    rng = np.random.default_rng(5)
    d = 16
    limit = ring.max_norm(20, d)
    x = rng.normal(0, 1, (7, d))
    x *= (0.99 * limit / np.linalg.norm(x, axis=1))[:, None]
    v = -x[0] / np.linalg.norm(x[0]) * limit
    for reveal in ("weights", "aggregate"):
        got = secrobust.aggregate(x, "cclip", 1, center=v, tau=0.25 * limit, reveal=reveal, insecure_test_seed=6)
        twin = secrobust.plain_aggregate(x, "cclip", 1, center=v, tau=0.25 * limit, reveal=reveal,
                                         insecure_test_seed=6)
        assert np.array_equal(got.aggregate, twin.aggregate)
        assert np.max(np.abs(got.aggregate - _exact_cclip(x, v, 0.25 * limit))) < 1e-3


@pytest.mark.parametrize("rule,reveal", [("krum", "weights"), ("norm-clip", "aggregate"), ("median", "aggregate")])
def test_rules_on_shares_refuse_unchecked_inputs_in_both_paths(rule: str, reveal: str) -> None:
    """Without the validity check no circuit's range holds: both the round and its twin refuse alike."""
    x = np.random.default_rng(0).normal(0, 1, (6, 10))
    big = np.zeros(10, dtype=np.uint64)
    big[0] = np.uint64(1 << 62)
    errors = []
    for run in (secrobust.aggregate, secrobust.plain_aggregate):
        with pytest.raises(ValueError, match="check_inputs=False is allowed only with reveal='distances'") as info:
            run(x, rule, 1, reveal=reveal, check_inputs=False, ring_rows={0: big}, insecure_test_seed=1)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
