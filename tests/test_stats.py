"""Byte accounting against the protocol's formulas, and the per-phase timings."""

from collections import defaultdict

import numpy as np
import pytest

import secrobust
from secrobust.api import Cluster
from secrobust.circuits import validity
from secrobust.gates import compare

HEADER = 400  # generous upper bound on one message's framing + JSON header


@pytest.mark.parametrize("n,d,chunk_bytes", [(6, 1000, 1 << 25), (10, 3000, 8 * 10 * 512)])
def test_bytes_match_the_formulas(n, d, chunk_bytes):
    x = np.random.default_rng(0).normal(size=(n, d))
    log = []
    res = Cluster(insecure_test_seed=0, tap=lambda *m: log.append(m)).run_round(x, "krum", 1, chunk_bytes=chunk_bytes)
    by = defaultdict(list)
    for sender, recipient, kind, data in log:
        by[(sender.split(":")[0], recipient.split(":")[0], kind)].append(len(data))
    masked = by[("worker", "S1", "share-masked")]
    assert len(masked) == n and all(8 * d < b < 8 * d + HEADER for b in masked)
    keys = by[("S0", "worker", "share-key")]
    assert len(keys) == n and all(b < HEADER for b in keys)
    assert not by[("worker", "S0", "share-masked")]
    # One masked opening, in one direction: S1 -> S0, one row of 8d bytes per worker whatever chunk_bytes is.
    opened = by[("S1", "S0", "masked-open")]
    assert len(opened) == n and not by[("S0", "S1", "masked-open")]
    assert all(8 * d < b < 8 * d + HEADER for b in opened)
    between = sum(len(data) for sender, recipient, _, data in log if {sender, recipient} == {"S0", "S1"})
    assert res.stats.servers_bytes() == between
    validity_bytes = 2 * (16 * validity.and_words(n) + 8 * compare.words_for(n))
    assert between < 8 * n * d + 16 * d + 8 * n * n + validity_bytes + 64 * HEADER + n * HEADER
    for direction in (("S0", "S1"), ("S1", "S0")):
        agg = by[(*direction, "aggregate-share")]
        assert len(agg) == 1 and 8 * d < agg[0] < 8 * d + HEADER
    words = validity.and_words(n)
    assert 8 * (n * n + words) < by[("dealer", "S1", "triple-s1")][0] < 8 * (n * n + words) + HEADER
    assert by[("dealer", "S0", "triple-s0")][0] < HEADER
    for direction in (("S0", "S1"), ("S1", "S0")):
        # two opened words per bit-triple word, then one plane of accept bits; one message per round
        checks = by[(*direction, "validity-open")]
        body = 16 * words + 8 * compare.words_for(n)
        assert body < sum(checks) < body + len(checks) * HEADER
        assert len(by[(*direction, "validity-seed")]) == 1
    assert 8 * n * n < by[("S0", "S1", "view-share")][0] < 8 * n * n + HEADER
    assert by[("S1", "S0", "weights")][0] < 8 * n + HEADER

    sent = defaultdict(int)
    for sender, _, _, data in log:
        sent[sender] += len(data)
    assert dict(res.stats.bytes_sent) == dict(sent)
    roles = res.stats.by_role()
    assert roles["workers"]["sent"] == sum(masked) and roles["workers"]["received"] == sum(keys)
    assert roles["S1"]["received"] == sum(masked) + \
        by[("dealer", "S1", "triple-s1")][0] + by[("S0", "S1", "view-share")][0] + \
        by[("S0", "S1", "aggregate-share")][0] + \
        sum(by[("S0", "S1", "validity-open")]) + by[("S0", "S1", "validity-seed")][0]
    assert by[("S1", "S0", "participants")] and not by[("S0", "S1", "participants")]


def test_norm_rules_use_the_cheaper_diagonal_triple():
    x = np.random.default_rng(1).normal(size=(20, 50))
    krum = secrobust.aggregate(x, "krum", 2).stats.by_role()
    clip = secrobust.aggregate(x, "norm-clip", 2).stats.by_role()
    assert krum["dealer"]["sent"] - clip["dealer"]["sent"] >= 8 * (20 * 20 - 20)


def test_mean_opens_nothing_but_checks_its_inputs():
    """The mean reveals nothing to S1; its validity check needs the norms, so a diag triple and one masked
    opening (booked as validity); without the check it needs no dealer at all."""
    res = secrobust.aggregate(np.ones((5, 100)), "mean")
    assert res.distances is None and res.revealed == {}
    assert np.allclose(res.aggregate, 1.0)
    assert res.stats.by_role()["dealer"]["sent"] > 0
    assert "open" not in res.stats.seconds and res.stats.seconds["validity"] > 0
    bare = secrobust.aggregate(np.ones((5, 100)), "mean", check_inputs=False)
    assert "dealer" not in bare.stats.by_role() and "validity" not in bare.stats.seconds
    assert np.array_equal(bare.aggregate, res.aggregate)


def test_phases_are_timed():
    res = secrobust.aggregate(np.random.default_rng(2).normal(size=(7, 100)), "geomed", 1)
    assert {"encode", "offline", "share", "agree", "validity", "open", "distances", "rule", "aggregate"} \
        <= set(res.stats.seconds)
    assert all(v >= 0 for v in res.stats.seconds.values())


def test_dp_noise_has_the_stated_variance_and_matches_the_plaintext_twin():
    x = np.random.default_rng(3).normal(size=(7, 20000)) * 0.01
    sigma = 0.05
    clean = secrobust.aggregate(x, "mean", insecure_test_seed=4)
    noisy = secrobust.aggregate(x, "mean", insecure_test_seed=4, dp_noise_std=sigma)
    noise = noisy.aggregate - clean.aggregate
    assert abs(noise.mean()) < 5 * np.sqrt(2) * sigma / np.sqrt(noise.size)
    assert abs(noise.std() / (np.sqrt(2) * sigma) - 1) < 0.03
    twin = secrobust.plain_aggregate(x, "mean", insecure_test_seed=4, dp_noise_std=sigma)
    assert np.array_equal(twin.aggregate, noisy.aggregate)
    other = secrobust.aggregate(x, "mean", insecure_test_seed=5, dp_noise_std=sigma)
    assert not np.array_equal(other.aggregate, noisy.aggregate)
