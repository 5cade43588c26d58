"""The stronger attacks of issue 11: optimal ALIE/IPM (rule-aware line search), min-max, min-sum, mimic with
a fixed target after warm-up, the adaptive attack on centered clipping; and ByzFL where it has the same attack."""

from __future__ import annotations

import math

import numpy as np
import pytest

import secrobust
from secrobust.train import attacks
from secrobust.train.attacks import line_search, make_attack, min_max_gamma, min_sum_gamma
from secrobust.train.oracle import RuleOracle, float_coordinatewise
from secrobust.train.runner import byzantine_inputs


def _honest(h: int = 16, d: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 1.0, size=(h, d))


def _deviation(rows: np.ndarray, honest: np.ndarray, rule: str, f: int, **options) -> float:
    """||engine's plaintext aggregate - honest mean||: the objective, measured by the engine itself."""
    x = np.vstack([honest, rows])
    agg = secrobust.plain_aggregate(x, rule, f, check_inputs=secrobust.rules.modes.default_mode(rule) != "distances" or options.get("reveal", "distances") != "distances", min_participants=2, **options).aggregate
    return float(np.linalg.norm(agg - honest.mean(axis=0)))


@pytest.mark.parametrize("rule, options", [
    ("mean", {}), ("krum", {}), ("multi-krum", {"m": 10}), ("geomed", {}), ("cclip", {"tau": 2.0}),
    ("norm-clip", {}), ("krum", {"pre": "nnm"}), ("geomed", {"pre": "arc"}),
    ("median", {"reveal": "aggregate"}), ("trimmed-mean", {"reveal": "aggregate"}), ("bulyan", {"reveal": "aggregate"}),
])
def test_the_oracle_computes_the_engines_aggregate_in_float(rule: str, options: dict) -> None:
    honest = _honest()
    f = 3 if rule == "bulyan" else 4
    if rule == "cclip":
        options = {**options, "center": np.full(40, 0.2)}
    mu, sigma = honest.mean(axis=0), honest.std(axis=0, ddof=1)
    oracle = RuleOracle(honest, mu, -sigma, f, rule, f, options)

    for s in (0.0, 0.7, 2.0, 9.0):
        x = oracle.rows(s)
        engine = secrobust.plain_aggregate(x, rule, f, check_inputs=secrobust.rules.modes.default_mode(rule) != "distances" or options.get("reveal", "distances") != "distances", min_participants=2, **options).aggregate
        np.testing.assert_allclose(oracle.aggregate(s), engine, atol=1e-5)
        assert oracle.deviation(s) == pytest.approx(np.linalg.norm(engine - mu), abs=1e-5)
        if rule in ("median", "trimmed-mean", "bulyan"):
            np.testing.assert_allclose(oracle.aggregate(s), float_coordinatewise(x, rule, f), atol=1e-12)


def test_optimal_alie_beats_alie_at_the_default_and_the_papers_z_against_krum() -> None:
    honest, own = _honest(), np.zeros((4, 40))
    rng = np.random.default_rng(0)

    best = attacks.optimal_alie(honest, own, rng, rule="krum", f=4)
    default = attacks.alie(honest, own, rng)
    paper = attacks.alie(honest, own, rng, z="paper")

    z = float(np.median((honest.mean(axis=0) - best[0]) / honest.std(axis=0, ddof=1)))
    assert 0 < z <= 32
    np.testing.assert_allclose(best, np.tile(honest.mean(axis=0) - z * honest.std(axis=0, ddof=1), (4, 1)))
    assert _deviation(best, honest, "krum", 4) > _deviation(default, honest, "krum", 4)
    assert _deviation(best, honest, "krum", 4) > _deviation(paper, honest, "krum", 4)


@pytest.mark.parametrize("rule", ["krum", "geomed", "median", "trimmed-mean", "cclip"])
def test_optimal_ipm_is_at_least_as_bad_as_every_grid_scale_and_the_default_ipm(rule: str) -> None:
    honest, own = _honest(seed=1), np.zeros((4, 40))
    options = {"reveal": "aggregate"} if rule in ("median", "trimmed-mean") else {}
    context = {"rule": rule, "f": 4, "rule_options": options}

    best = attacks.optimal_ipm(honest, own, np.random.default_rng(0), **context)

    reached = _deviation(best, honest, rule, 4, **options)
    for eps in (0.1, 0.5, 1.0, 2.0, 4.0, 32.0):
        other = attacks.ipm(honest, own, np.random.default_rng(0), epsilon=eps)
        assert reached >= _deviation(other, honest, rule, 4, **options) - 1e-5


def test_line_search_finds_the_maximum_of_a_smooth_objective_and_follows_byzfls_steps() -> None:
    s, value = line_search(lambda x: -(x - 3.3) ** 2, evals=20, max_scale=32.0)
    assert s == pytest.approx(3.3, abs=0.05) and value == pytest.approx(0.0, abs=0.01)
    seen: list[float] = []

    def record(x: float) -> float:
        seen.append(x)
        return -abs(x - 12.0)

    s, _ = line_search(record, search="byzfl", evals=5)
    # start 0, +10 (better: step doubles to 20), 30 (worse: step 16 and contraction), 26, 22.8
    assert seen == pytest.approx([0.0, 10.0, 30.0, 26.0, 22.8]) and s == 10.0


def test_optimal_attacks_keep_their_rows_within_the_validity_bound() -> None:
    honest, own = _honest(), np.zeros((4, 40))

    unbounded = attacks.optimal_ipm(honest, own, np.random.default_rng(0), rule="mean", f=4)
    bounded = attacks.optimal_ipm(honest, own, np.random.default_rng(0), rule="mean", f=4, norm_bound=10.0)

    assert np.linalg.norm(unbounded[0]) > 10.0
    assert np.linalg.norm(bounded[0]) <= 10.0


def test_optimal_attacks_need_the_rule_and_refuse_bad_search_options() -> None:
    honest, own = _honest(), np.zeros((4, 40))
    rng = np.random.default_rng(0)

    with pytest.raises(ValueError, match="needs the aggregation rule"):
        attacks.optimal_alie(honest, own, rng)
    with pytest.raises(ValueError, match="search must be one of grid, byzfl"):
        make_attack("optimal-ipm", search="golden")(honest, own, rng, rule="krum", f=4)
    with pytest.raises(ValueError, match="evals must be an integer >= 10"):
        make_attack("optimal-alie", evals=5)(honest, own, rng, rule="krum", f=4)
    with pytest.raises(ValueError, match="max_scale must be a positive finite number"):
        make_attack("optimal-alie", max_scale=-1.0)(honest, own, rng, rule="krum", f=4)
    with pytest.raises(ValueError, match="needs n >= 2f \\+ 3"):
        attacks.optimal_alie(honest[:4], own, rng, rule="krum", f=4)


def _paper_binary_search(honest: np.ndarray, p: np.ndarray, ok, start: float = 30.0, tol: float = 1e-9) -> float:
    """Shejwalkar and Houmansadr's search (their code's loop): gamma from ``start``, step halving."""
    gamma, step, good = start, start, 0.0
    while abs(good - gamma) > tol:
        if ok(honest.mean(axis=0) + gamma * p):
            good, gamma = gamma, gamma + step / 2
        else:
            gamma = gamma - step / 2
        step /= 2
    return good


@pytest.mark.parametrize("perturbation", ["std", "unit-vec", "sign"])
def test_min_max_sends_the_farthest_row_within_the_honest_diameter(perturbation: str) -> None:
    honest, own = _honest(), np.zeros((4, 40))
    p = attacks._perturbation(honest, perturbation)
    diameter = max(np.sum((a - b) ** 2) for a in honest for b in honest)

    def ok(row: np.ndarray) -> bool:
        return bool(np.max(np.sum((honest - row) ** 2, axis=1)) <= diameter)

    out = attacks.min_max(honest, own, np.random.default_rng(0), perturbation=perturbation)
    gamma = min_max_gamma(honest, p)

    np.testing.assert_allclose(out, np.tile(honest.mean(axis=0) + gamma * p, (4, 1)))
    assert ok(out[0] - 1e-9 * gamma * p) and not ok(out[0] + 1e-6 * gamma * p)
    assert gamma == pytest.approx(_paper_binary_search(honest, p, ok), abs=1e-6)


@pytest.mark.parametrize("perturbation", ["std", "unit-vec", "sign"])
def test_min_sum_sends_the_farthest_row_within_the_largest_honest_sum_of_distances(perturbation: str) -> None:
    honest, own = _honest(seed=2), np.zeros((3, 40))
    p = attacks._perturbation(honest, perturbation)
    largest = max(np.sum((honest - a) ** 2) for a in honest)

    def ok(row: np.ndarray) -> bool:
        return bool(np.sum((honest - row) ** 2) <= largest)

    out = attacks.min_sum(honest, own, np.random.default_rng(0), perturbation=perturbation)
    gamma = min_sum_gamma(honest, p)

    np.testing.assert_allclose(out, np.tile(honest.mean(axis=0) + gamma * p, (3, 1)))
    assert ok(out[0] - 1e-9 * gamma * p) and not ok(out[0] + 1e-6 * gamma * p)
    assert gamma == pytest.approx(_paper_binary_search(honest, p, ok), abs=1e-6)
    with pytest.raises(ValueError, match="perturbation must be one of std, unit-vec, sign"):
        attacks.min_sum(honest, own, np.random.default_rng(0), perturbation="inverse")


def test_mimic_fixes_its_target_after_the_warmup_and_each_run_starts_afresh() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.0, 1.0, size=(12, 30))
    own = np.zeros((4, 30))

    def rounds(attack, seed: int, count: int) -> list[int]:
        noise, picks = np.random.default_rng(seed), []
        for _ in range(count):
            honest = base + noise.normal(0.0, 3.0, size=base.shape)  # every round a different leader
            out = attack(honest, own, np.random.default_rng(0))
            picks.append(int(np.flatnonzero((honest == out[0]).all(axis=1))[0]))
        return picks

    first = make_attack("mimic", warmup=3)
    picks = rounds(first, 1, 10)
    again = rounds(make_attack("mimic", warmup=3), 1, 10)

    assert picks == again  # deterministic, and a new instance starts a new run
    assert len(set(picks[2:])) == 1  # from the last warm-up round on, one target
    assert first.t == 10 and first.chosen == picks[-1]
    with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
        make_attack("mimic", warmup=0)


def test_cclip_adaptive_puts_its_rows_at_distance_tau_from_the_center_against_the_honest_mean() -> None:
    honest, own = _honest(), np.zeros((4, 40))
    center = np.full(40, 0.3)
    mu = honest.mean(axis=0)

    fixed = attacks.cclip_adaptive(honest, own, np.random.default_rng(0), rule="cclip", f=4,
                                   rule_options={"center": center, "tau": 1.5})
    np.testing.assert_allclose(np.linalg.norm(fixed - center, axis=1), 1.5)
    assert (fixed[0] - center) @ mu / (1.5 * np.linalg.norm(mu)) == pytest.approx(-1.0)

    out = attacks.cclip_adaptive(honest, own, np.random.default_rng(0), rule="cclip", f=4,
                                 rule_options={"center": center})
    r = float(np.linalg.norm(out[0] - center))

    def pull(radius: float) -> float:
        """How far along -mu the Byzantine rows move cclip's output with the rows at that radius."""
        rows = np.tile(center + radius * (out[0] - center) / r, (4, 1))
        x = np.vstack([honest, rows])
        w = secrobust.rules.cclip(x, 4, center=center)
        return float(w[16:].sum() * radius)

    assert pull(r) >= max(pull(r * k) for k in (0.5, 0.9, 1.1, 2.0, 10.0)) - 1e-5  # fixed point: 2^-20
    bounded = attacks.cclip_adaptive(honest, own, np.random.default_rng(0), rule="cclip", f=4,
                                     rule_options={"center": center}, norm_bound=1.0)
    assert np.linalg.norm(bounded[0]) <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="direction must be one of mean, std, sign"):
        attacks.cclip_adaptive(honest, own, np.random.default_rng(0), direction="up")


def test_the_runner_passes_the_rule_context_to_rule_aware_attacks_only() -> None:
    honest_rows = _honest(h=6, d=10)
    context = {"rule": "krum", "f": 2, "rule_options": {"reveal": "weights"}, "norm_bound": 100.0}
    for name in ("optimal-alie", "alie", "cclip-adaptive"):
        sent = np.vstack([honest_rows, np.zeros((2, 10))])
        out = byzantine_inputs(make_attack(name), name, sent, [6, 7], np.arange(6), np.random.default_rng(0), 20,
                               context)
        assert out == {"unchecked": (6, 7)} and np.all(np.isfinite(sent[6:])) and sent[6:].any()


# ByzFL (LPD-EPFL/byzfl 0.0.11) where it implements the same attack. Not a dependency of the project.

def test_alie_ipm_and_mimic_equal_byzfls() -> None:
    byzfl = pytest.importorskip("byzfl")
    honest, own = _honest(), np.zeros((4, 40))
    rng = np.random.default_rng(0)

    np.testing.assert_allclose(attacks.alie(honest, own, rng, z=-1.5)[0], byzfl.ALittleIsEnough(1.5)(honest))
    np.testing.assert_allclose(attacks.ipm(honest, own, rng, epsilon=2.0)[0],
                               byzfl.InnerProductManipulation(2.0)(honest))
    np.testing.assert_array_equal(make_attack("mimic", target=3)(honest, own, rng)[0], byzfl.Mimic(3)(honest))


@pytest.mark.parametrize("rule", ["krum", "median", "trimmed-mean"])
def test_optimal_ipm_and_alie_with_byzfls_search_equal_byzfls(rule: str) -> None:
    byzfl = pytest.importorskip("byzfl")
    honest, own, f = _honest(seed=3), np.zeros((4, 40)), 4
    agg = {"krum": byzfl.Krum(f=f), "median": byzfl.Median(), "trimmed-mean": byzfl.TrMean(f=f)}[rule]
    options = {} if rule == "krum" else {"reveal": "aggregate"}
    context = {"rule": rule, "f": f, "rule_options": options}

    theirs = byzfl.Optimal_InnerProductManipulation(agg, pre_agg_list=[], f=f)(honest)
    ours = make_attack("optimal-ipm", search="byzfl")(honest, own, np.random.default_rng(0), **context)
    np.testing.assert_allclose(ours[0], theirs, rtol=1e-12, atol=1e-12)

    # ByzFL's ALIE sends mu + tau sigma, ours mu - z sigma; these rules commute with x -> -x, so ByzFL on the
    # negated rows finds our z and sends the negation of our row
    theirs = byzfl.Optimal_ALittleIsEnough(agg, pre_agg_list=[], f=f)(-honest)
    ours = make_attack("optimal-alie", search="byzfl")(honest, own, np.random.default_rng(0), **context)
    np.testing.assert_allclose(ours[0], -theirs, rtol=1e-12, atol=1e-12)
    assert math.isfinite(float(np.sum(ours)))


@pytest.mark.parametrize(("rule", "attack"), [
    ("krum", "optimal-alie"), ("cclip", "optimal-ipm"), ("cclip", "cclip-adaptive"), ("multi-krum", "min-max"),
    ("geomed", "min-sum"), ("mean", "mimic"), ("median@aggregate", "optimal-alie"),
])
def test_every_new_attack_runs_in_training(digits, one_spec, rule: str, attack: str) -> None:
    from secrobust.train.runner import run

    spec = one_spec(grid={"rules": [rule], "attacks": [attack]}, train={"rounds": 3, "eval_every": 3})
    result = run(spec, dataset=digits)

    assert len(result.history) == 2 and not result.diverged
