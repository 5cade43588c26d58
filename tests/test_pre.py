"""Pre-aggregation (NNM, bucketing, ARC) on the opened view, composed with every rule: the secure round equals
its twin bit for bit, and both equal an independent reference that mixes the update vectors themselves."""

import math

import numpy as np
import pytest
from datagen import updates_with_outliers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import secrobust
from secrobust.primitives import prg, ring
from secrobust.protocol.seeds import SeedSource
from secrobust.rules import pre as P

RULES = ("mean", "krum", "multi-krum", "geomed", "mda", "norm-clip", "cclip")
STEPS = ("nnm", "bucketing", "arc")


def combos():
    return [(r, s) for r in RULES for s in STEPS if not (r == "cclip" and s == "arc")]


def reference(x: np.ndarray, rule: str, f: int, step: str, seed: int, s: int = 2, **options) -> np.ndarray:
    """Mix the encoded vectors themselves, run the plaintext rule on them, map the weights back."""
    enc = ring.decode(ring.encode(x), ring.DEFAULT_FRAC_BITS)
    n = len(enc)
    if step == "nnm":
        d = ((enc[:, None, :] - enc[None, :, :]) ** 2).sum(-1)
        m = np.zeros((n, n))
        for i in range(n):
            order = sorted(range(n), key=lambda j: (d[i, j], j != i, j))
            m[i, order[: n - f]] = 1.0 / (n - f)
    elif step == "bucketing":
        perm = P._permutation(n, SeedSource(seed).seed("bucketing", 0))
        m = np.zeros((math.ceil(n / s), n))
        for b in range(m.shape[0]):
            members = perm[b * s:(b + 1) * s]
            m[b, members] = 1.0 / len(members)
    else:
        norms = np.linalg.norm(enc, axis=1)
        k = int(2 * f / n * (n - f))
        tau = np.sort(norms)[::-1][k]
        m = np.diag(np.where(norms > tau, tau / norms, 1.0))
    y = m @ enc
    w = secrobust.rules.weights(y, rule, f, check_inputs=False, **options)
    return m.T @ w


@pytest.mark.parametrize("rule, step", combos())
def test_every_rule_with_every_step_equals_its_twin_and_the_vector_reference(rule, step):
    f = 1 if (step == "bucketing" and rule in ("krum", "multi-krum")) else 2
    x = updates_with_outliers(4, 14, 60, f) * 0.05
    opts = {"tau": 0.2} if rule == "cclip" else {}
    res = secrobust.aggregate(x, rule, f, pre=step, insecure_test_seed=5, **opts)
    twin = secrobust.plain_aggregate(x, rule, f, pre=step, insecure_test_seed=5, **opts)
    np.testing.assert_array_equal(res.weights, twin.weights)
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    want = reference(x, rule, f, step, seed=5, **opts)
    # the reference re-encodes the mixed vectors at 2^-F, which moves continuous rules (geomed, clipping) slightly
    np.testing.assert_allclose(res.weights, want, rtol=1e-4, atol=1e-7)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=st.sampled_from(STEPS), n=st.integers(7, 16), seed=st.integers(0, 2**16), s=st.integers(1, 4))
def test_multi_krum_after_any_step_is_exact_against_its_twin(step, n, seed, s):
    f = 1
    if step == "bucketing" and math.ceil(n / s) < 2 * f + 3:
        s = 1
    kw = {"pre": step, **({"s": s} if step == "bucketing" else {})}
    x = updates_with_outliers(seed, n, 20, f) * 0.05
    res = secrobust.aggregate(x, "multi-krum", f, insecure_test_seed=seed, min_participants=2, **kw)
    twin = secrobust.plain_aggregate(x, "multi-krum", f, insecure_test_seed=seed, min_participants=2, **kw)
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    if step != "arc":        # averages of averages; ARC scales the clipped updates down
        assert abs(res.weights.sum() - 1.0) < 1e-12
    else:
        assert res.weights.sum() <= 1.0 + 1e-12


def test_krum_after_nnm_spreads_its_weight_over_the_winners_neighbours():
    """Krum picks one mixed vector, the mean of n - f updates: n - f workers get 1/(n - f) each, no outlier."""
    x = updates_with_outliers(0, 12, 50, 3) * 0.05
    w = secrobust.aggregate(x, "krum", 3, pre="nnm").weights
    np.testing.assert_allclose(np.sort(w)[::-1][:9], 1 / 9)
    assert (w[:3] == 0).all()


def test_bucketing_draws_a_fresh_permutation_and_the_test_seed_fixes_it():
    x = updates_with_outliers(1, 12, 10, 1) * 0.05
    fixed = [secrobust.aggregate(x, "mean", 1, pre="bucketing", s=3, insecure_test_seed=9).weights for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    perms = {tuple(P._permutation(12, prg.fresh_seed())) for _ in range(20)}
    assert len(perms) > 15


def test_what_s1_opens_with_each_step():
    x = updates_with_outliers(2, 10, 10, 1) * 0.05
    assert set(secrobust.aggregate(x, "krum", 1, pre="nnm").revealed) == {"distances"}
    assert set(secrobust.aggregate(x, "krum", 1, pre="arc").revealed) == {"distances", "norms"}
    assert set(secrobust.aggregate(x, "norm-clip", 1, pre="arc").revealed) == {"norms"}
    assert set(secrobust.aggregate(x, "norm-clip", 1, pre="bucketing").revealed) == {"distances", "norms"}
    assert secrobust.aggregate(x, "mean", 1, pre="bucketing").revealed == {}


@pytest.mark.parametrize("kwargs, match", [
    ({"pre": "median"}, "pre must be one of 'nnm', 'bucketing', 'arc'"),
    ({"pre": "nnm", "s": 2}, "s \\(the bucket size\\) goes with pre='bucketing'"),
    ({"s": 2}, "goes with pre='bucketing'"),
    ({"pre": "bucketing", "s": 0}, "bucket size s must be a positive integer"),
    ({"pre": "nnm", "reveal": "weights"}, "runs with reveal='distances' only"),
    ({"pre": "bucketing", "s": 4}, "needs n >= 2f \\+ 3 after bucketing"),
])
def test_bad_pre_options_are_refused_by_name(kwargs, match):
    x = updates_with_outliers(0, 12, 10, 1)
    with pytest.raises(ValueError, match=match):
        secrobust.aggregate(x, "krum", 2, **kwargs)


def test_arc_and_cclip_do_not_mix():
    x = updates_with_outliers(0, 12, 10, 1)
    with pytest.raises(ValueError, match="use one of them"):
        secrobust.aggregate(x, "cclip", 1, pre="arc")
