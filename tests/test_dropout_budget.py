"""Coordinate-wise rules on shares keep running when workers drop out or are rejected.

The dealer's material is dealt for the planned cohort before any share arrives; a pruned sorting network
for fewer workers can take more (trimmed-mean at n = 7 takes more AND words than at n = 8), so the plan
sizes the envelope over every cohort the round can end with (``rules.coordinatewise._cohort_envelope``)."""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.circuits import coordinatewise as C
from secrobust.rules import coordinatewise as family


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
@pytest.mark.parametrize("n", [4, 5, 8, 9])
def test_one_dropout_never_exhausts_the_rule_material(rule: str, n: int) -> None:
    x = np.random.default_rng(n).normal(0, 1, (n, 70))
    got = secrobust.aggregate(x, rule, 1, reveal="aggregate", drop={1: "S0"}, min_participants=2,
                              insecure_test_seed=n)
    kept = [i for i in range(n) if i != 1]
    twin = secrobust.plain_aggregate(x[kept], rule, 1, reveal="aggregate", min_participants=2, insecure_test_seed=n)
    assert np.array_equal(got.aggregate, twin.aggregate)


def test_a_byzantine_ring_row_rejected_in_a_trimmed_mean_round_leaves_enough_material() -> None:
    x = np.random.default_rng(0).normal(0, 1, (8, 30))
    big = np.zeros(30, dtype=np.uint64)
    big[0] = np.uint64(1 << 63)
    got = secrobust.aggregate(x, "trimmed-mean", 2, reveal="aggregate", ring_rows={3: big}, insecure_test_seed=1)
    assert set(got.rejected) == {3}
    twin = secrobust.plain_aggregate(x, "trimmed-mean", 2, reveal="aggregate", ring_rows={3: big},
                                     insecure_test_seed=1)
    assert np.array_equal(got.aggregate, twin.aggregate)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "bulyan"])
@pytest.mark.parametrize("w", [1, 63, 64, 65, 200])
def test_the_64_column_decomposition_equals_the_full_dry_run(rule: str, w: int) -> None:
    for n in (3, 5, 8, 11):
        f = 0 if rule == "bulyan" else 1
        try:
            C.check_options(rule, n, f, 1 << 27)
        except ValueError:
            continue
        assert (family._chunk_size_by_words(rule, n, f, w, 1 << 27, rule == "bulyan")
                == family._chunk_size(rule, n, f, w, 1 << 27, rule == "bulyan"))


def test_the_envelope_covers_every_smaller_cohort() -> None:
    n, f, d = 9, 2, 100
    budget, rounds = family._cohort_envelope("trimmed-mean", n, f, d, 1 << 27)
    for n2 in range(5, n + 1):
        for f2 in range(max(0, f - (n - n2)), f + 1):
            b, r = family._cohort_size("trimmed-mean", n2, f2, d, 1 << 27)
            assert b.and_words <= budget.and_words and b.dabit_words <= budget.dabit_words
            assert b.mults <= budget.mults and r <= rounds
