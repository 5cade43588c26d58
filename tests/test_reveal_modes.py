"""reveal="weights" and reveal="aggregate": the rule runs on shares; the round equals its plaintext twin bit for
bit (weights, aggregate, rejections, dropouts, DP noise), it resists the ring attacks, and bad options are refused."""

import numpy as np
import pytest
from datagen import updates_with_outliers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ring_attacks import ATTACKS, BYZ, X

import secrobust
from secrobust.api import Cluster
from secrobust.circuits import selection, validity
from secrobust.gates import arith, compare
from secrobust.primitives import ring
from secrobust.rules.view import dmax_for

MODES = ("weights", "aggregate")
SHARED_RULES = ("krum", "multi-krum", "mda")


def check_same(res, twin, mode):
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    assert res.participants == twin.participants and res.rejected == twin.rejected
    assert res.distances is None and res.revealed == {} and res.reveal == mode
    if mode == "aggregate":
        assert res.weights is None and twin.weights is None
    else:
        np.testing.assert_array_equal(res.weights, twin.weights)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(5, 13), data=st.data(), mode=st.sampled_from(MODES), rule=st.sampled_from(SHARED_RULES),
       seed=st.integers(0, 2**16))
def test_secure_equals_the_twin_for_any_n_f_and_m(n, data, mode, rule, seed):
    f = data.draw(st.integers(0, (n - 3) // 2 if rule != "mda" else min(3, (n - 1) // 2)))
    options = {}
    if rule == "multi-krum" and data.draw(st.booleans()):
        options["m"] = data.draw(st.integers(1, n))
    x = updates_with_outliers(seed, n, 40, f) * 0.05
    if data.draw(st.booleans()):
        x[1] = x[0]  # exact ties in the scores
    res = secrobust.aggregate(x, rule, f, reveal=mode, insecure_test_seed=seed, min_participants=2, **options)
    twin = secrobust.plain_aggregate(x, rule, f, reveal=mode, insecure_test_seed=seed, min_participants=2, **options)
    check_same(res, twin, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", SHARED_RULES)
def test_the_modes_pick_what_distances_mode_picks_on_separated_data(rule, mode):
    x = updates_with_outliers(3, 15, 200, 4) * 0.05
    open_ = secrobust.aggregate(x, rule, 4)
    hidden = secrobust.aggregate(x, rule, 4, reveal=mode)
    np.testing.assert_array_equal(hidden.aggregate, open_.aggregate)
    if mode == "weights":  # Krum's family publishes exactly 1/m on the chosen workers, as the default mode does
        np.testing.assert_array_equal(hidden.weights, open_.weights)


@pytest.mark.parametrize("mode", MODES)
def test_dropouts_rejections_and_dp_noise_keep_the_twin(mode):
    x = updates_with_outliers(8, 14, 64, 3) * 0.05
    drop = {2: "S1", 5: "S0", 9: "both"}
    kept = [i for i in range(14) if i not in drop]
    rows = {kept[0]: np.full(64, np.uint64(1) << np.uint64(63))}
    res = secrobust.aggregate(x, "multi-krum", 3, reveal=mode, drop=drop, ring_rows=rows, dp_noise_std=0.01,
                              insecure_test_seed=4)
    twin = secrobust.plain_aggregate(x[kept], "multi-krum", 3, reveal=mode, ring_rows={0: rows[kept[0]]},
                                     dp_noise_std=0.01, insecure_test_seed=4)
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    assert res.rejected == {kept[0]: validity.REASON}
    assert res.participants == tuple(kept[i] for i in twin.participants)
    if mode == "weights":
        np.testing.assert_array_equal(res.weights[kept], twin.weights)
        assert (res.weights[list(drop)] == 0).all()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", SHARED_RULES)
def test_every_ring_attack_is_rejected_in_the_hidden_modes(rule, mode, attack):
    res = secrobust.aggregate(X, rule, 2, reveal=mode, ring_rows={BYZ: ATTACKS[attack]}, insecure_test_seed=11)
    honest = secrobust.plain_aggregate(np.delete(X, BYZ, axis=0), rule, 1, reveal=mode)
    assert res.rejected == {BYZ: validity.REASON} and BYZ not in res.participants
    np.testing.assert_array_equal(res.aggregate, honest.aggregate)


def test_a_cluster_runs_modes_in_turn_and_never_reuses_material():
    cluster = Cluster(insecure_test_seed=2)
    x = updates_with_outliers(1, 9, 30, 2) * 0.05
    got = [cluster.run_round(x, "krum", 2, reveal=mode) for mode in ("distances", "weights", "aggregate", "weights")]
    for r in got[1:]:
        np.testing.assert_array_equal(r.aggregate, got[0].aggregate)


def test_the_circuit_is_the_exact_krum_of_the_ring_distances():
    rng = np.random.default_rng(0)
    for n, f in [(5, 1), (9, 3), (16, 2)]:
        pts = rng.integers(-2**26, 2**26, size=(n, 6))
        pts[2] = pts[3]
        dist = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1).astype(np.uint64)
        d0 = rng.integers(0, 2**64 - 1, size=dist.shape, dtype=np.uint64, endpoint=True)
        for m in (1, 2, n - f):
            p0, p1 = arith.run_both(lambda p, s: selection.krum_circuit(p, d0 if p == 0 else dist - d0, f, m,
                                                                              dmax_for(2**27), s),
                                    "t", compare.AndTripleSeeds.fresh())
            chosen = compare.plane_bits(p0 ^ p1, n)
            scores = np.sort(np.where(np.eye(n, dtype=bool), np.inf, dist.astype(float)), axis=1)[:, :n - f - 2].sum(1)
            np.testing.assert_array_equal(np.flatnonzero(chosen), np.sort(np.argsort(scores, kind="stable")[:m]))


def test_mda_on_shares_is_refused_when_the_subset_search_is_too_large():
    x = updates_with_outliers(0, 30, 8, 5)
    with pytest.raises(ValueError, match="small n only|use it for small n"):
        secrobust.aggregate(x, "mda", 5, reveal="weights")


def test_scores_that_could_wrap_the_ring_are_refused_up_front():
    with pytest.raises(ValueError, match="n - f - 2 must be below"):
        selection.score_width(300, 1, dmax_for(2**27))


@pytest.mark.parametrize("rule", ["geomed"])
def test_a_rule_without_a_circuit_names_the_modes_and_rules_it_can_use(rule):
    x = updates_with_outliers(0, 9, 10, 1)
    with pytest.raises(ValueError, match=f"rule '{rule}' runs only with reveal='distances'.*krum"):
        secrobust.aggregate(x, rule, 1, reveal="weights")


def test_bad_reveal_values_and_options_are_refused_before_any_work():
    x = updates_with_outliers(0, 9, 10, 1)
    with pytest.raises(ValueError, match="reveal must be one of 'distances', 'weights', 'aggregate'"):
        secrobust.aggregate(x, "krum", 1, reveal="everything")
    with pytest.raises(ValueError, match="multi-krum needs 1 <= m <= n"):
        secrobust.aggregate(x, "multi-krum", 1, reveal="aggregate", m=0)
    with pytest.raises(ValueError, match="unknown option"):
        secrobust.aggregate(x, "krum", 1, reveal="weights", m=2)
    with pytest.raises(ValueError, match="reveal must be one of"):
        secrobust.plain_aggregate(x, "krum", 1, reveal="")


@pytest.mark.parametrize("mode", MODES)
def test_the_mean_opens_nothing_in_any_mode(mode):
    x = updates_with_outliers(0, 6, 10, 0)
    res = secrobust.aggregate(x, "mean", 0, reveal=mode)
    np.testing.assert_allclose(res.aggregate, x.mean(axis=0), atol=2.0**-ring.DEFAULT_FRAC_BITS)
    assert (res.weights is None) == (mode == "aggregate")


COORDINATEWISE = ("median", "trimmed-mean", "bulyan")


def _max_f(rule: str, n: int) -> int:
    return (n - 3) // 4 if rule == "bulyan" else (n - 1) // 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=st.sampled_from(COORDINATEWISE), data=st.data(), seed=st.integers(0, 2**16))
def test_coordinatewise_rules_equal_their_twin_through_the_round(rule, data, seed):
    n = data.draw(st.integers(3 if rule == "bulyan" else 2, 11))
    f = data.draw(st.integers(0, _max_f(rule, n)))
    x = updates_with_outliers(seed, n, 70, f) * 0.05
    if data.draw(st.booleans()):
        x[-1] = x[0]
    res = secrobust.aggregate(x, rule, f, reveal="aggregate", insecure_test_seed=seed, min_participants=2)
    twin = secrobust.plain_aggregate(x, rule, f, reveal="aggregate", insecure_test_seed=seed, min_participants=2)
    check_same(res, twin, "aggregate")


def test_coordinatewise_rules_match_numpy_within_the_fixed_point_error():
    x = updates_with_outliers(2, 11, 500, 2) * 0.05
    step = 2.0 ** -ring.DEFAULT_FRAC_BITS
    med = secrobust.aggregate(x, "median", 2, reveal="aggregate").aggregate
    np.testing.assert_allclose(med, np.median(x, axis=0), rtol=0, atol=step)
    trimmed = secrobust.aggregate(x, "trimmed-mean", 2, reveal="aggregate").aggregate
    np.testing.assert_allclose(trimmed, np.sort(x, axis=0)[2:-2].mean(axis=0), rtol=0, atol=step)


def test_coordinatewise_rules_with_dropouts_a_rejected_attacker_and_noise():
    x = updates_with_outliers(6, 13, 40, 2) * 0.05
    drop = {3: "S1", 7: "both"}
    kept = [i for i in range(13) if i not in drop]
    rows = {kept[1]: ATTACKS["high-bits"][:1].repeat(40)}
    for rule in COORDINATEWISE:
        res = secrobust.aggregate(x, rule, 2, reveal="aggregate", drop=drop, ring_rows=rows, dp_noise_std=0.01,
                                  insecure_test_seed=9, min_participants=2)
        twin = secrobust.plain_aggregate(x[kept], rule, 2, reveal="aggregate", ring_rows={1: rows[kept[1]]},
                                         dp_noise_std=0.01, insecure_test_seed=9, min_participants=2)
        np.testing.assert_array_equal(res.aggregate, twin.aggregate)
        assert res.rejected == {kept[1]: validity.REASON} and res.weights is None


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("rule", COORDINATEWISE)
def test_every_ring_attack_is_rejected_by_the_coordinatewise_rules(rule, attack):
    res = secrobust.aggregate(X, rule, 2, reveal="aggregate", ring_rows={BYZ: ATTACKS[attack]}, insecure_test_seed=11)
    honest = secrobust.plain_aggregate(np.delete(X, BYZ, axis=0), rule, 1, reveal="aggregate")
    assert res.rejected == {BYZ: validity.REASON}
    np.testing.assert_array_equal(res.aggregate, honest.aggregate)


@pytest.mark.parametrize("mode", ["distances", "weights"])
@pytest.mark.parametrize("rule", COORDINATEWISE)
def test_coordinatewise_rules_name_the_one_mode_they_run_in(rule, mode):
    x = updates_with_outliers(0, 11, 10, 1)
    with pytest.raises(ValueError, match=f"rule '{rule}' runs only with reveal='aggregate'"):
        secrobust.aggregate(x, rule, 1, reveal=mode)


CLIPPING = ("norm-clip", "cclip")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=st.sampled_from(CLIPPING), mode=st.sampled_from(MODES), data=st.data(), seed=st.integers(0, 2**16))
def test_clipping_on_shares_equals_its_twin_and_the_opened_rule_within_the_bound(rule, mode, data, seed):
    n = data.draw(st.integers(5, 12))
    x = updates_with_outliers(seed, n, 30, 2) * 0.05
    options = {}
    if data.draw(st.booleans()):
        options["tau"] = data.draw(st.floats(0.01, 2.0))
    if rule == "cclip" and data.draw(st.booleans()):
        options["center"] = np.full(30, 0.01)
    res = secrobust.aggregate(x, rule, 2, reveal=mode, insecure_test_seed=seed, **options)
    twin = secrobust.plain_aggregate(x, rule, 2, reveal=mode, insecure_test_seed=seed, **options)
    check_same(res, twin, mode)
    opened = secrobust.aggregate(x, rule, 2, **options)
    # the clip factors' error (docs/clip2pc.md): 2^-25 relative (median tau) plus 5 units of 2^-32 per weight
    if mode == "weights":
        np.testing.assert_allclose(res.weights, opened.weights, rtol=2.0**-25, atol=5 * 2.0**-32)
    scale = np.abs(x).max() * n
    np.testing.assert_allclose(res.aggregate, opened.aggregate, rtol=0, atol=scale * (2.0**-25 + 2.0**-28) + 2.0**-19)


def test_cclip_on_shares_runs_one_iteration_and_says_so():
    x = updates_with_outliers(0, 9, 10, 1)
    with pytest.raises(ValueError, match="cclip on shares runs one iteration"):
        secrobust.aggregate(x, "cclip", 1, reveal="aggregate", iterations=2)
