"""The input validity check: its parameters, completeness on honest inputs at the bound, soundness measured
at a reduced security parameter, and the exactness of its ring arithmetic."""

import math

import numpy as np
import pytest

import secrobust
from secrobust.circuits import validity
from secrobust.primitives import kernel, ring
from secrobust.protocol.server import RoundPlan, new_round

P = validity.params()
U64 = np.uint64


def test_parameters_meet_the_stated_errors_and_bounds():
    assert P.bound == 2**27 and P.bound_sq < 2**63
    assert P.pass_probability ** P.projections <= 2.0**-40
    assert 2 * P.projections * math.exp(-(P.window / P.bound) ** 2) <= 2.0**-40
    for d in (1, 10**3, 10**6, 10**7):
        assert 64 <= secrobust.max_norm(20, d) <= 1024
    assert P.max_dimension() > 10**9
    # the honest encoder's worst case stays far from every wrap: distances <= (2B)^2, aggregate <= B 2^W
    assert (2 * P.bound) ** 2 < 2**62 and P.bound * 2**ring.WEIGHT_FRAC_BITS < 2**62


def test_settings_where_the_guarantee_cannot_hold_are_refused():
    with pytest.raises(ValueError, match=r"largest dimension for which the input validity check is sound"):
        validity.check_dimension(P.max_dimension() + 1)
    plan = RoundPlan(0, (0, 1), P.max_dimension() + 1, 20, (), triple_id="t")
    with pytest.raises(ValueError, match=r"d = \d+ is above"):
        new_round(0, plan)
    with pytest.raises(ValueError, match=r"too large for a wrap-around check"):
        validity.params(40, 2**31)


def at_bound(kind: str, d: int, f: int, rng) -> np.ndarray:
    limit = secrobust.max_norm(f, d)
    if kind == "axis":
        v = np.zeros(d)
        v[rng.integers(d)] = 1.0
    elif kind == "flat":
        v = np.ones(d)
    else:
        v = rng.normal(size=d)
    return v / np.linalg.norm(v) * limit


@pytest.mark.parametrize("d", [1, 7, 1000])
@pytest.mark.parametrize("f", [0, 20, 28])
def test_honest_inputs_at_and_below_the_bound_pass(d, f):
    rng = np.random.default_rng(d + f)
    rows = [at_bound(k, d, f, rng) * s for k in ("axis", "flat", "random") for s in (1.0, 1 - 1e-9, 0.5)]
    x = np.array(rows + [np.zeros(d)])
    for seed in range(3):
        res = secrobust.aggregate(x, "mean", insecure_test_seed=seed, frac_bits=f)
        assert res.rejected == {}


def test_completeness_in_high_dimension():
    rng = np.random.default_rng(0)
    d = 300_000
    x = np.array([at_bound(k, d, 20, rng) for k in ("axis", "flat", "random")])
    for seed in range(4):
        assert validity.plain_accept(ring.encode(x), bytes([seed]) * 16).all()
    assert secrobust.aggregate(x[:, :100_000] * np.sqrt(3), "mean", insecure_test_seed=1,
                               min_participants=3).rejected == {}


def test_the_encoder_and_the_check_agree_exactly_at_the_bound():
    """Float64 cannot tell B^2 from B^2 + 1; the encoder decides exactly, like the check."""
    with pytest.raises(ValueError, match="above the encoder's range"):
        ring.encode(np.array([2.0**7, 2.0**-20]), 20)
    at = ring.encode(np.array([2.0**7, 0.0]), 20)
    assert validity.plain_accept(at[None, :], bytes(16))[0]


def test_just_above_the_bound_is_rejected_deterministically():
    d = 50
    enc = np.full(d, math.isqrt(P.bound_sq // d) + 1, dtype=np.int64).view(U64)
    assert P.bound_sq < d * int(enc[0]) ** 2 < P.bound_sq * 1.001
    for seed in range(5):
        assert not validity.plain_accept(enc[None, :], bytes([seed]) * 16)[0]


def reduced(projections: int) -> validity.Params:
    """The same check with only ``projections`` projections (the window keeps its full-size value)."""
    return validity.Params(P.bound, projections, P.window, 0, P.pass_probability)


def wrapped_vectors() -> dict[str, np.ndarray]:
    """Vectors whose squared norm wraps to (nearly) 0 mod 2^64, so only the projections can catch them."""
    spike = np.zeros(16, U64)
    spike[3] = U64(1) << U64(32)
    half = np.zeros(16, U64)
    half[:2] = U64(1) << U64(63)
    spread = np.full(4096, U64(1) << U64(26))
    signs = np.random.default_rng(0).choice([-1, 1], size=4096)
    mixed = (signs << 26).astype(np.int64).view(U64)
    return {"spike": spike, "half-ring": half, "spread": spread, "mixed-signs": mixed}


@pytest.mark.parametrize("name", sorted(wrapped_vectors()))
def test_soundness_at_four_projections_is_within_the_bound(name):
    """With 4 projections each wrapped vector passes at most p^4 of the time (p = the per-projection bound),
    measured over 600 independent projection seeds."""
    x = wrapped_vectors()[name]
    assert np.einsum("i,i", x, x) <= U64(P.bound_sq)
    p4 = reduced(4)
    trials = 600
    passed = sum(validity.plain_accept(x[None, :], (k).to_bytes(16, "little"), p4)[0] for k in range(trials))
    bound = P.pass_probability**4
    assert passed / trials <= bound + 4 * math.sqrt(bound * (1 - bound) / trials)
    if name in ("spike", "half-ring"):
        # case (a) of the argument is tight: exactly 1/2 per projection, so 1/16 with four
        assert abs(passed / trials - 1 / 16) < 4 * math.sqrt((1 / 16) * (15 / 16) / trials)


def test_the_full_check_rejects_every_wrapped_vector():
    for name, x in wrapped_vectors().items():
        for seed in range(3):
            assert not validity.plain_accept(x[None, :], bytes([seed + 1]) * 16)[0], name


def test_projection_is_exact_in_the_ring_across_its_column_blocks(monkeypatch):
    monkeypatch.setattr(validity, "PROJECT_COLUMNS", 7)
    monkeypatch.setattr(kernel, "BLOCK_COLS", 5)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2**64 - 1, size=(5, 40), dtype=U64, endpoint=True)
    x[0] = U64(2**64 - 1)
    x[1] = U64(2**63)
    seed = b"s" * 16
    r = validity.projection_columns(seed, 6, 0, 40)
    assert r.dtype == np.int8 and r.flags.c_contiguous
    want = [[sum(int(a) * int(b) for a, b in zip(row, proj)) % 2**64 for proj in r] for row in x]
    np.testing.assert_array_equal(validity.project(x, r), np.array(want, dtype=U64))
    np.testing.assert_array_equal(validity.project_columns(x, seed, 6, 0), np.array(want, dtype=U64))
    np.testing.assert_array_equal(validity.project_columns(x[:, 11:], seed, 6, 11),
                                  x[:, 11:] @ r[:, 11:].astype(np.int64).view(U64).T)


def test_projection_columns_have_random_access_and_the_stated_distribution():
    seed = b"k" * 16
    whole = validity.projection_columns(seed, 3, 0, 4001)
    np.testing.assert_array_equal(validity.projection_columns(seed, 3, 1237, 3001), whole[:, 1237:3001])
    r = validity.projection_columns(seed, 20, 0, 20000).ravel()
    assert set(np.unique(r)) == {-1.0, 0.0, 1.0}
    assert abs((r == 0).mean() - 0.5) < 0.01 and abs((r == 1).mean() - 0.25) < 0.01


def test_the_joint_seed_depends_on_both_contributions_and_the_round():
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    seeds = {validity.joint_seed(0, a, b), validity.joint_seed(0, a, c), validity.joint_seed(0, c, b),
             validity.joint_seed(1, a, b)}
    assert len(seeds) == 4


def test_a_tighter_norm_bound_caps_every_contribution():
    """With DP the check's bound is the clipping norm C: a worker above C is rejected even though the encoder
    would take it, one clipped to C passes, and the secure round equals its twin."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 300))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3] *= 1.5
    x[5] *= 1.0 + 1e-3
    res = secrobust.aggregate(x, "mean", norm_bound=1.0, insecure_test_seed=2, over_bound="exclude")
    assert sorted(res.rejected) == [3, 5] and res.weights[3] == res.weights[5] == 0
    twin = secrobust.plain_aggregate(x, "mean", norm_bound=1.0, insecure_test_seed=2, over_bound="exclude")
    np.testing.assert_array_equal(res.aggregate, twin.aggregate)
    assert secrobust.aggregate(x, "mean", insecure_test_seed=2).rejected == {}
    assert validity.scaled_bound(1.0, 20, 300) == 2**20 + math.ceil(math.sqrt(300) / 2)


@pytest.mark.parametrize("bad,match", [(0.0, "positive finite"), (-1.0, "positive finite"), (np.nan, "positive finite"),
                                       (2.0**28, "norm 2.68435e[+]08 is above 1.34218e[+]08, the encoder's range at frac_bits=0"), (True, "positive finite")])
def test_bad_norm_bounds_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        secrobust.aggregate(np.ones((5, 4)), "mean", norm_bound=bad)


def test_the_deployment_request_carries_the_norm_bound():
    from secrobust.deploy.rounds import RoundRequest

    req = RoundRequest(round_id=1, worker_ids=(0, 1, 2), d=10, rule="mean", triple_id="t", norm_bound=0.5)
    again = RoundRequest.from_json(req.to_json())
    assert again == req and again.plan().norm_bound == validity.scaled_bound(0.5, 20, 10)
    with pytest.raises(ValueError, match="above the encoder's range"):
        RoundRequest.from_json({**req.to_json(), "norm_bound": 1e6})
