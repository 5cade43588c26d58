"""The minimum cohort and test-only seeds: what an honest-but-curious party could learn without them.

A round that aggregates one worker reveals its update exactly (the mean of one is that update), also
when the others drop out. A fixed seed used on two inputs reuses every mask, so S1 sees x - x'.
"""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.errors import RoundAborted
from secrobust.primitives import prg
from secrobust.rules.cohort import DEFAULT_MIN_PARTICIPANTS, check_min_participants

X = np.random.default_rng(3).normal(size=(6, 8)) * 0.1


def test_the_default_cohort_is_five():
    assert DEFAULT_MIN_PARTICIPANTS == 5


@pytest.mark.parametrize("rule", ["mean", "krum", "geomed", "norm-clip"])
def test_a_round_over_fewer_than_the_minimum_is_refused_up_front(rule):
    with pytest.raises(ValueError, match=r"at least 5 participants \(min_participants\)"):
        secrobust.aggregate(X[:4], rule, 0)
    with pytest.raises(ValueError, match=r"at least 5 participants"):
        secrobust.plain_aggregate(X[:4], rule, 0)


def test_one_survivor_of_many_is_never_aggregated_alone():
    # the attack: four of five workers cut off from S1 leave one, whose "mean" would be its update
    with pytest.raises(RoundAborted, match="only 1 workers reached both servers"):
        secrobust.aggregate(X[:5], "mean", 0, drop={i: "S1" for i in range(1, 5)}, min_participants=2)


@pytest.mark.parametrize("drop", [{0: "S1", 1: "S0"}, {0: "both"}, {2: "S1", 3: "S1", 4: "S0"}])
def test_dropouts_below_the_minimum_abort_the_round(drop):
    x = X[:5]
    with pytest.raises(RoundAborted, match="at least 5 participants"):
        secrobust.aggregate(x, "mean", 0, drop=drop)


def test_dropouts_that_leave_the_minimum_still_aggregate():
    res = secrobust.aggregate(X, "mean", 0, drop={5: "S1"})
    assert res.participants == (0, 1, 2, 3, 4)
    np.testing.assert_allclose(res.aggregate, X[:5].mean(axis=0), atol=1e-5)


def test_rejected_workers_count_against_the_cohort():
    x = X[:5].copy()
    ring_row = np.full(8, 2**62, dtype=np.uint64)   # far above the norm bound: the validity check rejects it
    with pytest.raises(RoundAborted, match="at least 5 participants"):
        secrobust.aggregate(x, "mean", 0, ring_rows={0: ring_row})
    res = secrobust.aggregate(x, "mean", 0, ring_rows={0: ring_row}, min_participants=4)
    assert set(res.rejected) == {0} and res.participants == (1, 2, 3, 4)


def test_a_smaller_cohort_can_be_asked_for_down_to_two():
    res = secrobust.aggregate(X[:2], "mean", 0, min_participants=2)
    np.testing.assert_allclose(res.aggregate, X[:2].mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, True, "5", None])
def test_bad_minimums_are_refused(bad):
    with pytest.raises(ValueError, match="min_participants must be an integer >= 2"):
        check_min_participants(bad)
    with pytest.raises(ValueError, match="min_participants"):
        secrobust.aggregate(X, "mean", 0, min_participants=bad)


def test_the_old_seed_keyword_is_refused_with_its_new_name():
    for fn in (secrobust.aggregate, secrobust.plain_aggregate):
        with pytest.raises(TypeError, match="insecure_test_seed"):
            fn(X, "mean", 0, seed=1)
    with pytest.raises(TypeError):
        secrobust.Cluster(1)  # positional seeds are gone: the keyword must be spelled out


def test_without_a_test_seed_two_runs_use_fresh_masks():
    """Two runs on the same input: S1's masked shares differ (fresh keys), so one run says nothing of another."""
    def masked_rows(**kw):
        seen = []
        secrobust.Cluster(tap=lambda s, r, kind, data: seen.append(data) if kind == "share-masked" else None,
                          **kw).run_round(X, "mean", 0)
        return seen

    assert masked_rows() != masked_rows()
    assert masked_rows(insecure_test_seed=7) == masked_rows(insecure_test_seed=7)


def test_key_and_child_seed_derivations_are_separated():
    seed = bytes(range(16))
    assert prg.derive_key(seed, "seed|p") != prg.derive_seed(seed, "p")
