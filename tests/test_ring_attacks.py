"""A worker who knows the ring sends any elements of Z_2^64. Each known ring attack, against each rule:
without the input validity check it moves the aggregate (negative controls); with it, the attacker is
rejected, gets weight 0, and the round equals the plaintext twin run on the honest rows alone."""

import numpy as np
import pytest

import secrobust
from secrobust.api import Cluster
from secrobust.circuits import validity
from secrobust.primitives import ring

F = ring.DEFAULT_FRAC_BITS
N, D, BYZ = 11, 24, 0
RULES = ("mean", "krum", "multi-krum", "geomed", "mda", "norm-clip", "cclip")
U64 = np.uint64


def honest_updates(seed: int = 5) -> np.ndarray:
    """Honest rows that agree (are 0) on coordinate 0, so a zero-wrap offset there is invisible to them."""
    x = np.random.default_rng(seed).normal(size=(N, D)) * 0.1 + 0.5
    x[:, 0] = 0.0
    return x


def ring_distances(row: np.ndarray, others: np.ndarray) -> np.ndarray:
    """||row - o||^2 mod 2^64 read as signed, as the protocol without a check opened them."""
    diff = others - row
    return np.einsum("ij,ij->i", diff, diff).view(np.int64)


def high_bits(x: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """encode(target) + K 2^32 in every coordinate, K chosen so every ring distance to the honest rows reads
    negative: S1 then sees the attacker closest to everybody (Krum returned the target exactly)."""
    honest = ring.encode(np.delete(x, BYZ, axis=0), F)
    base = ring.encode(target, F)
    for _ in range(200_000):
        row = base + (U64(rng.integers(1, 2**31)) << U64(32))
        if (ring_distances(row, honest) < 0).all():
            return row
    raise AssertionError("no K found")


def zero_wrap(x: np.ndarray) -> np.ndarray:
    """The honest mean plus 2^32 (2^(32-F) real) on coordinate 0: (2^32)^2 = 2^64 = 0 in every distance."""
    row = ring.encode(np.delete(x, BYZ, axis=0).mean(axis=0), F)
    row[0] += U64(1) << U64(32)
    return row


def norm_wrap(x: np.ndarray) -> np.ndarray:
    """a on coordinate 0 with a^2 mod 2^64 in the upper half: the squared norm decodes negative."""
    row = ring.encode(np.delete(x, BYZ, axis=0).mean(axis=0), F)
    row[0] = U64(3_719_550_786)
    return row


def half_ring(x: np.ndarray) -> np.ndarray:
    """2^63 on two coordinates: its own negative, invisible to squared distances and to +-1 projections."""
    row = ring.encode(np.delete(x, BYZ, axis=0).mean(axis=0), F)
    row[:2] += U64(1) << U64(63)
    return row


def random_words(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, size=D, dtype=U64, endpoint=True)


def just_above_bound(x: np.ndarray) -> np.ndarray:
    """No wrap at all: an honest-looking vector of norm 1.5 B, which the honest encoder would refuse."""
    v = np.ones(D) / np.sqrt(D) * 1.5 * secrobust.max_norm(F, D)
    return np.rint(v * 2.0**F).astype(np.int64).view(U64)


def attacks(x: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"high-bits": high_bits(x, np.full(D, -20.0), rng), "zero-wrap": zero_wrap(x), "norm-wrap": norm_wrap(x),
            "half-ring": half_ring(x), "random-words": random_words(rng), "above-bound": just_above_bound(x)}


X = honest_updates()
ATTACKS = attacks(X)


def test_the_attacks_do_what_they_claim():
    honest = ring.encode(np.delete(X, BYZ, axis=0), F)
    assert (ring_distances(ATTACKS["high-bits"], honest) < 0).all()
    zero = ring.encode(np.delete(X, BYZ, axis=0).mean(axis=0), F)
    assert np.array_equal(ring_distances(ATTACKS["zero-wrap"], honest), ring_distances(zero, honest))
    assert ring_distances(ATTACKS["norm-wrap"], np.zeros((1, D), U64))[0] < 0
    assert np.array_equal(ring_distances(ATTACKS["half-ring"], honest), ring_distances(zero, honest))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("rule", RULES)
def test_every_ring_attack_is_rejected_under_every_rule(rule, attack):
    # Prepare: worker 0 sends the attack's ring elements, the others their honest updates
    f = 2
    # Execute
    res = secrobust.aggregate(X, rule, f, ring_rows={BYZ: ATTACKS[attack]}, insecure_test_seed=11)
    twin = secrobust.plain_aggregate(np.delete(X, BYZ, axis=0), rule, f - 1)
    # Assert: rejected with its reason, weight 0, and the round is the honest-only round
    assert res.rejected == {BYZ: validity.REASON}
    assert res.weights[BYZ] == 0.0 and BYZ not in res.participants
    np.testing.assert_array_equal(res.weights[1:], twin.weights)
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    plain = secrobust.plain_aggregate(X, rule, f, ring_rows={BYZ: ATTACKS[attack]}, insecure_test_seed=11)
    np.testing.assert_array_equal(plain.aggregate, res.aggregate)
    assert plain.rejected == res.rejected


def test_without_the_check_zero_wrap_takes_over_multi_krum():
    """Negative control: the attack the check exists for still works when the check is off."""
    res = secrobust.aggregate(X, "multi-krum", 2, ring_rows={BYZ: ATTACKS["zero-wrap"]}, check_inputs=False)
    assert res.weights[BYZ] > 0 and not res.rejected
    assert abs(res.aggregate[0]) > 100
    checked = secrobust.aggregate(X, "multi-krum", 2, ring_rows={BYZ: ATTACKS["zero-wrap"]})
    assert abs(checked.aggregate[0]) < 1e-6


@pytest.mark.parametrize("attack,rule", [("high-bits", "krum"), ("high-bits", "geomed"), ("norm-wrap", "norm-clip"),
                                         ("norm-wrap", "cclip")])
def test_defence_in_depth_s1_rejects_an_impossible_view(attack, rule):
    """With the check off, negative distances or norms are proof of a malformed input: S1 drops that worker
    (never prefers it), tells S0, and the rule's statistics stay finite."""
    res = secrobust.aggregate(X, rule, 2, ring_rows={BYZ: ATTACKS[attack]}, check_inputs=False)
    assert res.rejected == {BYZ: validity.VIEW_REASON}
    assert res.weights[BYZ] == 0.0 and np.isfinite(res.weights).all() and np.isfinite(res.aggregate).all()
    twin = secrobust.plain_aggregate(np.delete(X, BYZ, axis=0), rule, 1, check_inputs=False)
    np.testing.assert_allclose(res.aggregate, twin.aggregate, atol=1e-6)


def test_a_rejected_worker_counts_against_f():
    """Rejections are proofs of malice, so f shrinks with them and a round with f rejected workers still runs."""
    bad = {i: ATTACKS["random-words"] for i in range(3)}
    res = secrobust.aggregate(X, "krum", 3, ring_rows=bad)
    assert sorted(res.rejected) == [0, 1, 2]
    np.testing.assert_array_equal(res.aggregate, secrobust.plain_aggregate(X[3:], "krum", 0).aggregate)


def test_too_many_rejections_abort_the_round():
    bad = {i: ATTACKS["random-words"] for i in range(9)}
    with pytest.raises(secrobust.RoundAborted, match=r"2 workers passed the input validity check"):
        secrobust.aggregate(X, "krum", 2, ring_rows=bad)


def test_cclip_never_keeps_a_center_the_encoder_refuses():
    """One round whose aggregate leaves the encoder's range (here: DP noise far above it) cannot stop the next
    rounds: the next center is scaled back into range."""
    cluster = Cluster(insecure_test_seed=2)
    big = cluster.run_round(X, "cclip", 2, dp_noise_std=40.0)
    assert np.linalg.norm(big.aggregate) > secrobust.max_norm(F, D)
    nxt = cluster.run_round(X, "cclip", 2, ring_rows={BYZ: ATTACKS["norm-wrap"]})
    assert nxt.rejected == {BYZ: validity.REASON} and np.isfinite(nxt.aggregate).all()
    assert cluster.run_round(X, "cclip", 2).rejected == {}


def test_a_bad_distance_between_two_workers_drops_both_and_counts_once():
    """Defence in depth with the check off: a 2^32 spike on coordinate 0 reads out of range only against the
    one honest worker whose coordinate 0 is positive. The distance proves only that one of the two is
    malformed, so both lose their weight and f shrinks by one, not two."""
    x = X.copy()
    x[1, 0] = 0.3
    spike = np.zeros(D, U64)
    spike[0] = U64(1) << U64(32)
    res = secrobust.aggregate(x, "krum", 2, ring_rows={BYZ: spike}, check_inputs=False)
    assert res.rejected == {0: validity.VIEW_REASON, 1: validity.VIEW_REASON}
    twin = secrobust.plain_aggregate(x[2:], "krum", 1, check_inputs=False)
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    np.testing.assert_array_equal(res.weights[2:], twin.weights)
