"""Attacker review of the seams where features meet (2026-12-07, after issue 18's fixes).

Each test is one seam an attacker pass probed in process. The findings that are not fixed yet are
``xfail(strict=True)`` with their severity, and listed in docs/ranges.md, "Known seams (attacker review,
2026-12-07)"; the others pin a seam that was checked and found sound.
"""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.errors import RoundAborted

SEED = 20261207


def _honest(n: int, d: int, scale: float = 0.01, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, (n, d))


# findings


def test_an_honest_worker_over_norm_bound_does_not_lower_f():
    """norm_bound × rejections × f. "A rejected worker is provably malformed, so it counts against f" holds
    for the encoder's range, which the honest encoder enforces; with a tighter ``norm_bound`` the honest
    encoder (here, in the deployment's worker and in the Flower mod) still accepts any update up to the
    encoder's range, and the check then rejects an honest worker above the bound. The rule runs with
    f - 1 against f Byzantine workers: trimmed-mean with f = 2, two Byzantine workers at the bound on
    coordinate 0, and one honest worker with a large but honest update lets a Byzantine value through."""
    n, d, f, bound = 8, 4, 2, 1.0
    x = _honest(n, d)
    x[0] = 0.0
    x[0, 0] = 0.999                 # Byzantine, within norm_bound: passes the check
    x[1] = x[0]
    x[7] = 3.0 * np.ones(d) / 2.0   # honest, norm 3: above norm_bound, within the encoder's range
    try:
        res = secrobust.aggregate(x, "trimmed-mean", f, reveal="aggregate", norm_bound=bound, over_bound="clip",
                                  insecure_test_seed=SEED)
    except ValueError as exc:       # a fix may refuse the honest worker's update up front, naming it
        assert "7" in str(exc)
        return
    # with over_bound="clip" the honest encoder clips to the public bound, so worker 7 is not
    # rejected, f stays 2, and the trimmed mean stays within the honest values (worker 7's clipped one included)
    assert res.rejected == {}
    honest = np.append(x[2:7, 0], x[7, 0] * bound / np.linalg.norm(x[7]))
    assert honest.min() - 1e-3 <= res.aggregate[0] <= honest.max() + 1e-3, (res.rejected, res.aggregate[0])
    excluded = secrobust.aggregate(x, "trimmed-mean", f, reveal="aggregate", norm_bound=bound, over_bound="exclude",
                                   insecure_test_seed=SEED)
    assert 7 in excluded.rejected


@pytest.mark.parametrize("reveal", ["distances", "weights"])
def test_multi_krum_explicit_m_after_rejections_is_a_round_abort(reveal):
    """rule options × dropouts × rejections. ``m`` is checked against the planned n when the round opens,
    but the minimum cohort ignores it: two rejected ring attackers and one dropout leave 6 < m = 7, and
    the rule itself raises ValueError ("multi-krum needs 1 <= m <= n = 6") in the middle of the round,
    where every other too-small cohort is a RoundAborted the caller can skip."""
    n, d, f = 9, 8, 2
    x = _honest(n, d)
    wrap = {0: np.full(d, 1 << 62, dtype=np.uint64), 1: np.full(d, 1 << 61, dtype=np.uint64)}
    with pytest.raises(RoundAborted):
        secrobust.aggregate(x, "multi-krum", f, m=n - f, reveal=reveal, ring_rows=wrap, drop={5: "S1"},
                            insecure_test_seed=SEED)


# seams checked and found sound


@pytest.mark.parametrize("reveal", ["distances", "weights", "aggregate"])
def test_carried_center_after_a_noisy_round_equals_its_twin(reveal):
    """Cluster state × DP × cclip × reveal: a Krum round with DP noise leaves a noisy aggregate; cclip's
    next round takes it as its center and equals the twin given that center, in every mode."""
    x = _honest(9, 16, scale=0.1)
    cluster = secrobust.Cluster(insecure_test_seed=SEED)
    cluster.run_round(3.0 * x, "krum", 2, dp_noise_std=0.5)
    center = cluster.last_aggregate.copy()
    res = cluster.run_round(x, "cclip", 2, reveal=reveal)
    twin = secrobust.plain_aggregate(x, "cclip", 2, reveal=reveal, center=center, insecure_test_seed=SEED,
                                     round_id=1)
    assert np.array_equal(res.aggregate, twin.aggregate)
    if reveal != "aggregate":
        assert np.array_equal(res.weights, twin.weights)


def test_an_aborted_round_leaves_a_cluster_usable():
    """Cluster state × dropouts: a round aborted for too few participants does not poison the next one
    (fresh triple, same weights as the twin of that round id)."""
    x = _honest(9, 8, scale=0.1)
    cluster = secrobust.Cluster(insecure_test_seed=SEED)
    with pytest.raises(RoundAborted):
        cluster.run_round(x, "krum", 2, drop={i: "S1" for i in range(4)})
    res = cluster.run_round(x, "krum", 2, reveal="weights")
    twin = secrobust.plain_aggregate(x, "krum", 2, reveal="weights", insecure_test_seed=SEED, round_id=1)
    assert np.array_equal(res.weights, twin.weights)
    assert np.array_equal(res.aggregate, twin.aggregate)


@pytest.mark.parametrize("reveal", ["distances", "weights", "aggregate"])
@pytest.mark.parametrize("tau", [float("nan"), float("inf"), -1.0, 0.0])
def test_a_bad_tau_is_refused_by_both_paths_before_the_round(reveal, tau):
    """rule options × reveal: a non-positive or non-finite clip threshold is refused up front by the secure
    round and its twin alike (nothing reaches a circuit whose range assumes tau > 0)."""
    x = _honest(7, 4)
    for run in (secrobust.aggregate, secrobust.plain_aggregate):
        with pytest.raises(ValueError, match="tau must be a positive finite number"):
            run(x, "norm-clip", 1, reveal=reveal, tau=tau, insecure_test_seed=SEED)


def test_bucketing_after_dropouts_aborts_instead_of_running_short():
    """pre-aggregation × dropouts: one dropout leaves 4 buckets of 2 for Krum with f = 1 (needs 5); the
    round aborts with the bucket requirement, it does not run Krum on too few buckets."""
    x = _honest(9, 8, scale=0.1)
    with pytest.raises(RoundAborted, match="after bucketing"):
        secrobust.aggregate(x, "krum", 1, pre="bucketing", s=2, drop={1: "S1"}, insecure_test_seed=SEED)


def test_pre_aggregation_is_refused_on_shares():
    """pre-aggregation × reveal: NNM mixes on the opened view, so a round on shares refuses it rather than
    silently running the rule without it."""
    x = _honest(9, 8)
    for reveal in ("weights", "aggregate"):
        with pytest.raises(ValueError, match="reveal='distances' only"):
            secrobust.aggregate(x, "krum", 1, pre="nnm", reveal=reveal)
