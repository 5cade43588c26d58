"""Client sampling under DP (issue 22, point 2): Poisson cohorts, the fixed-denominator aggregate, and the
privacy spent, checked against Opacus' RDP accountant called directly."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from runner_spy import EngineSpy

from secrobust.privacy import NoSensitivityBound
from secrobust.train import runner
from secrobust.train.config import RunSpec
from secrobust.train.data import Dataset
from secrobust.train.dp import PrivacyAccountant, epsilon_after, poisson_cohort
from secrobust.train.runner import RunResult, run

Z, C, Q = 1.0, 0.05, 0.3


def _opacus(z: float, q: float, rounds: int, delta: float = 1e-5) -> float:
    direct = RDPAccountant()
    for _ in range(rounds):
        direct.step(noise_multiplier=z, sample_rate=q)
    return direct.get_epsilon(delta=delta)


def test_accountant_with_a_sample_rate_is_opacus_and_amplifies() -> None:
    ours = PrivacyAccountant(1.1, 0.05)
    ours.step(200)

    assert ours.epsilon(1e-5) == pytest.approx(_opacus(1.1, 0.05, 200), rel=1e-12)
    assert ours.epsilon(1e-5) < epsilon_after(1.1, 200, 1e-5) / 5


def test_poisson_cohorts_are_independent_draws_at_rate_q() -> None:
    rng = np.random.default_rng(5)
    sizes = [len(poisson_cohort(50, 0.2, rng)) for _ in range(2000)]

    assert np.mean(sizes) == pytest.approx(10.0, abs=0.3)  # Binomial(50, 0.2): mean 10, sd 2.83/sqrt(2000)
    assert np.var(sizes) == pytest.approx(8.0, rel=0.15)   # variance Nq(1-q) = 8: not a fixed size
    assert list(poisson_cohort(7, 1.0, rng)) == list(range(7))


@pytest.fixture
def train(digits: Dataset, one_spec: Callable[..., RunSpec]) -> Callable[..., RunResult]:
    def go(rule: str, attack: str = "none", rounds: int = 6, q: float = Q, **sections: Any) -> RunResult:
        grid = {"rules": [rule], "attacks": [attack], **sections.pop("grid", {})}
        train = {"rounds": rounds, "sample_rate": q, "eval_every": 3, **sections.pop("train", {})}
        spec = one_spec(grid=grid, train=train, dp={"clip": C, "noise_multiplier": Z}, **sections)
        return run(spec, dataset=digits)

    return go


@pytest.mark.parametrize("rule", ["mean", "norm-clip"])
def test_a_sampled_run_reports_opacus_epsilon_for_the_observer_and_no_amplification_for_a_server(
        train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    spy = EngineSpy(monkeypatch)
    tau = 0.02
    result = train(rule, rounds=8, rule_options={"norm-clip": {"tau": tau}})

    assert result.epsilon == pytest.approx(_opacus(Z, Q, 8), rel=1e-12)
    assert result.history[-1]["epsilon"] == pytest.approx(result.epsilon)
    honest = [i for i in range(20) if i not in result.byzantine]
    took_part = (result.weights[:, honest] > 0).sum(axis=0)
    assert result.epsilon_server == pytest.approx(_opacus(Z, 1.0, int(took_part.max())), rel=1e-12)
    assert result.epsilon_server > result.epsilon
    record = result.record()
    assert record["sample_rate"] == Q and record["epsilon_server"] == result.epsilon_server
    # the cohort varies; workers outside it get no weight; each call's noise is z Delta_g / k for its k rows
    assert len(set(result.cohort_sizes.tolist())) > 1
    assert ((result.weights > 0).sum(axis=1) == result.cohort_sizes).all()
    per_worker = C if rule == "mean" else tau
    for call, size in zip(spy.calls, result.cohort_sizes, strict=True):
        k = len(call["updates"])
        # zero rows up to the smallest cohort allowed: 5, and norm-clip's 2 f_k + 1 with f_k = ceil(4k/20) <= 5
        assert k == max(size, 5)
        assert not call["updates"][size:].any()
        assert call["dp_noise_std"] == pytest.approx(Z * per_worker / k)
        assert call["norm_bound"] == C


def test_a_sampled_round_releases_the_fixed_denominator_sum(train: Callable[..., RunResult],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spy = EngineSpy(monkeypatch)
    released: list[np.ndarray] = []
    real = runner.carried_center
    monkeypatch.setattr(runner, "carried_center", lambda agg, bits: (released.append(agg.copy()), real(agg, bits))[1])

    result = train("mean", rounds=4)

    # what the model moves by is (k / (qN)) times the engine's cohort average: (1/(qN)) sum over the cohort
    assert len(released) == len(spy.calls) == 4
    for agg, call, size in zip(released, spy.calls, result.cohort_sizes, strict=True):
        k = len(call["updates"])
        np.testing.assert_allclose(agg, k / (Q * 20) * call["aggregate"], rtol=1e-12)
        noiseless = call["updates"].sum(axis=0) / (Q * 20)
        assert np.linalg.norm(agg - noiseless) < 6 * np.sqrt(2 * agg.size) * Z * C / (Q * 20)
        assert size <= k


def test_byzantine_rows_over_the_bound_add_nothing_and_keep_the_denominator(
        train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch) -> None:
    spy = EngineSpy(monkeypatch)
    result = train("mean", "sign-flip", rounds=4, attack_options={"sign-flip": {"scale": 8.0}})

    assert result.rejected.sum() > 0
    for call in spy.calls:
        norms = np.linalg.norm(call["updates"], axis=1)
        assert norms.max() <= C * (1 + 1e-12)  # every row passes: the engine divides by the rows it was given


def test_sampling_under_dp_refuses_a_rule_without_any_bound(train: Callable[..., RunResult]) -> None:
    with pytest.raises(NoSensitivityBound, match="median norm"):
        train("norm-clip", rounds=1)


@pytest.mark.parametrize("rule", ["krum", "mean+nnm"])
def test_a_sampled_rule_without_the_sum_form_is_composed_over_its_rounds_without_amplification(
        train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Krum (one row can change the selection) and any rule after NNM are no fixed-denominator sums: given the
    cohorts, which do not depend on the data, each round is a Gaussian mechanism with sensitivity 2C, and a worker
    is exposed in the rounds it takes part in. Observer and server get the same, unamplified, epsilon."""
    spy = EngineSpy(monkeypatch)
    q = 0.7
    result = train(rule, rounds=8, q=q)

    honest = [i for i in range(20) if i not in result.byzantine]
    # a cohort of k is told f_k = ceil(4k/20) Byzantine workers; below krum's 2 f_k + 3 the round is skipped
    runs = [k for k in result.cohort_sizes.tolist() if k >= max(5, 2 * runner.cohort_f(4, 20, k, q) + 3)]
    assert 0 < len(spy.calls) == len(runs)
    assert [len(call["updates"]) for call in spy.calls] == runs
    assert all(call["dp_noise_std"] == pytest.approx(Z * 2 * C) for call in spy.calls)
    took_part = runner_participation(result)
    assert result.epsilon == result.epsilon_server == pytest.approx(_opacus(Z, 1.0, int(took_part[honest].max())),
                                                                     rel=1e-12)
    assert result.epsilon > _opacus(Z, q, 8)


def runner_participation(result: RunResult) -> np.ndarray:
    """How many rounds each worker was drawn into, from the run's own cohort stream (drawn up front)."""
    seq = np.random.SeedSequence(result.spec.seed).spawn(5)[4]
    rng = np.random.default_rng(seq)
    counts = np.zeros(result.spec.train.workers, dtype=int)
    for _ in range(result.spec.train.rounds):
        counts[poisson_cohort(result.spec.train.workers, result.spec.train.sample_rate, rng)] += 1
    return counts


def test_sampled_cclip_releases_the_center_plus_the_fixed_denominator_sum_of_clipped_differences(
        train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """cclip with a public tau and center v is v + (1/(qN)) sum_{cohort} clip_tau(x_i - v): adding or removing
    one worker adds or removes one term of norm <= tau, so the per-server noise is z tau/(qN) whatever the
    cohort's size; padding rows are the center (they add clip_tau(0) = 0), and the center is public and in
    the ball of radius C, so a padding row passes the validity check."""
    spy = EngineSpy(monkeypatch)
    released: list[np.ndarray] = []
    real = runner.carried_center
    monkeypatch.setattr(runner, "carried_center", lambda agg, bits: (released.append(agg.copy()), real(agg, bits))[1])
    tau = 0.01

    result = train("cclip", "alie", rounds=6, rule_options={"cclip": {"tau": tau}})

    assert result.epsilon == pytest.approx(_opacus(Z, Q, 6), rel=1e-12)
    for agg, call, size in zip(released, spy.calls, result.cohort_sizes, strict=True):
        v, x = call["center"], call["updates"]
        k = len(x)
        assert np.linalg.norm(v) <= C
        assert (x[size:] == v).all()
        assert call["dp_noise_std"] == pytest.approx(Z * tau / k)
        np.testing.assert_allclose(agg, v + k / (Q * 20) * (call["aggregate"] - v), rtol=1e-9, atol=1e-15)
        diff = x - v
        norms = np.linalg.norm(diff, axis=1, keepdims=True)
        noiseless = v + (diff * np.minimum(1.0, tau / np.maximum(norms, 1e-300))).sum(axis=0) / (Q * 20)
        assert np.linalg.norm(agg - noiseless) < 6 * np.sqrt(2 * agg.size) * Z * tau / (Q * 20)
    assert len({np.linalg.norm(c["center"]) for c in spy.calls[1:]}) > 1


def test_a_target_epsilon_is_spent_exactly_as_opacus_says(train: Callable[..., RunResult],
                                                          one_spec: Callable[..., RunSpec],
                                                          digits: Dataset) -> None:
    spec = one_spec(grid={"rules": ["mean"], "attacks": ["none"]}, dp={"clip": C, "epsilon": 4.0},
                    train={"rounds": 5, "sample_rate": Q, "eval_every": 5})
    result = run(spec, dataset=digits)

    assert result.epsilon == pytest.approx(4.0, abs=0.01)
    assert result.epsilon == pytest.approx(_opacus(result.noise_multiplier, Q, 5), rel=1e-12)
    assert result.record()["target_epsilon"] == 4.0


def test_ring_attacks_are_refused_with_sampling_under_dp(train: Callable[..., RunResult]) -> None:
    with pytest.raises(ValueError, match="ring elements"):
        train("mean", "random-ring", rounds=1)
    with pytest.raises(ValueError, match="ring elements"):
        train("cclip", "random-ring", rounds=1, rule_options={"cclip": {"tau": 0.02}})


@pytest.mark.parametrize(("rule", "options", "match"), [
    ("cclip", {}, "median distance"),
    ("norm-clip", {}, "median norm"),
    ("cclip", {"cclip": {"tau": 0.02, "iterations": 2}}, "iterations = 2"),
])
def test_dp_refuses_a_rule_without_a_bound_naming_those_with_one(
        train: Callable[..., RunResult], rule: str, options: dict, match: str) -> None:
    with pytest.raises(NoSensitivityBound, match=match) as info:
        train(rule, rounds=1, q=1.0, rule_options=options)
    assert "norm-clip with a public tau" in str(info.value)


def test_full_participation_calibrates_on_n_minus_f_and_keeps_run_ids(
        train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch, one_spec: Callable[..., RunSpec]) -> None:
    spy = EngineSpy(monkeypatch)
    result = train("trimmed-mean", rounds=2, q=1.0)

    assert all(call["dp_noise_std"] == pytest.approx(Z * C / (20 - 4 - 2 * 4)) for call in spy.calls)
    assert result.epsilon == result.epsilon_server == pytest.approx(epsilon_after(Z, 2, 1e-5))
    # the id of a run without sampling is the hash it had before train.sample_rate (and the later
    # train.idle_byzantine, train.fixed_dropout, train.renew_dropout, data.split, dp.epsilon and model.init) existed
    spec = one_spec()
    before = spec.to_dict()
    del before["train"]["sample_rate"], before["train"]["idle_byzantine"], before["train"]["fixed_dropout"]
    del before["train"]["renew_dropout"]
    del before["data"]["split"]
    del before["dp"]["epsilon"]
    del before["model"]["init"]
    blob = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert spec.run_id == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert one_spec(train={"sample_rate": 0.5}).run_id != spec.run_id


@pytest.mark.parametrize(("sections", "match"), [
    ({"grid": {"rules": ["mean", "cclip"]}}, "median distance"),
    ({"grid": {"rules": ["mean", "norm-clip"]}, "train": {"sample_rate": 0.5}}, "median norm"),
    ({"grid": {"attacks": ["random-ring"]}, "train": {"sample_rate": 0.5}}, "ring attacks"),
])
def test_a_dp_grid_with_a_rule_it_cannot_bound_is_refused_before_any_run(
        small_config: Callable[..., Any], sections: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small_config(dp={"clip": 1.0, "noise_multiplier": 1.0}, **sections)
    small_config(**sections)  # without noise the same grid is fine



def test_grid_epsilon_expands_into_one_run_per_target_and_keeps_old_run_ids(
        small_config: Callable[..., Any]) -> None:
    plain = small_config(dp={"clip": 1.0})
    grid = small_config(dp={"clip": 1.0}, grid={"epsilon": [0, 8]})

    runs = grid.runs()
    assert [r.dp.epsilon for r in runs] == [0.0] * len(plain.runs()) + [8.0] * len(plain.runs())
    assert [r.run_id for r in runs[: len(plain.runs())]] == [r.run_id for r in plain.runs()]
    with pytest.raises(ValueError, match="not both"):
        small_config(dp={"clip": 1.0, "noise_multiplier": 1.0, "epsilon": 2.0})
    with pytest.raises(ValueError, match="leave dp.noise_multiplier"):
        small_config(dp={"clip": 1.0, "noise_multiplier": 1.0}, grid={"epsilon": [1]})
    with pytest.raises(ValueError, match="needs dp.clip"):
        small_config(grid={"epsilon": [1]})
    with pytest.raises(NoSensitivityBound, match="median norm"):
        small_config(dp={"clip": 1.0}, grid={"epsilon": [0, 1], "rules": ["norm-clip"]})


def test_baseline_at_f0_runs_the_attack_free_baseline_once_and_every_attack_with_attackers(
        small_config: Callable[..., Any]) -> None:
    grid = {"attacks": ["none", "alie", "sign-flip"], "f": [0, 2, 4], "rules": ["mean"], "secure": [False]}
    full = small_config(grid=grid).runs()
    paired = small_config(grid={**grid, "baseline_at_f0": True}).runs()

    assert len(full) == 9
    assert [(s.attack, s.f) for s in paired] == [("none", 0), ("alie", 2), ("alie", 4), ("sign-flip", 2),
                                                 ("sign-flip", 4)]
    assert {s.run_id for s in paired} <= {s.run_id for s in full}  # the same runs, fewer of them


@pytest.mark.parametrize(("k", "want"), [(10, 1), (11, 2), (50, 5), (3, 1), (0, 0)])
def test_a_sampled_cohort_is_told_the_populations_share_of_byzantine_workers(k: int, want: int) -> None:
    assert runner.cohort_f(5, 50, k, 0.2) == want
    assert runner.cohort_f(5, 50, k, 1.0) == 5  # every worker in every round: the whole f


def test_a_sampled_round_tells_the_rule_its_cohorts_f(train: Callable[..., RunResult],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With f = 4 of 20 workers at q = 0.3 a cohort holds about 1.2 Byzantine workers: Krum told the global f
    needs 11 rows and would skip nearly every round of about 6; told its cohort's share it runs them."""
    seen: list[tuple[int, int]] = []
    real = runner.engine_aggregate
    monkeypatch.setattr(runner, "engine_aggregate",
                        lambda u, rule, f, **kw: (seen.append((len(u), f)), real(u, rule, f, **kw))[1])
    result = train("krum", rounds=6, q=0.3)

    assert seen and all(f == runner.cohort_f(4, 20, k, 0.3) < 4 for k, f in seen)
    assert len(seen) == sum(k >= max(5, 2 * runner.cohort_f(4, 20, k, 0.3) + 3) for k in result.cohort_sizes.tolist())
    assert len(seen) > sum(k >= 2 * 4 + 3 for k in result.cohort_sizes.tolist())  # more than with the global f


def test_a_grid_over_epsilons_keeps_one_summary_row_and_one_table_row_per_target(
        small_config: Callable[..., Any]) -> None:
    from rich.console import Console

    from secrobust.train.experiment import accuracy_tables, summarize

    config = small_config(dp={"clip": 1.0}, grid={"epsilon": [0, 8], "rules": ["mean"], "attacks": ["none"],
                                                  "f": [0], "secure": [False]})
    records = [{"rule": s.rule, "attack": s.attack, "f": s.f, "secure": s.secure, "final_accuracy": 0.5 + s.dp.epsilon / 100,
                "byzantine_weight": 0.0, "rounds": 3, "diverged": False, "seconds": 1.0, "dataset": "digits",
                "epsilon": s.dp.epsilon or None, "epsilon_server": None, "spec": s.to_dict()} for s in config.runs()]
    summary = summarize(config, records)

    assert sorted((r["target_epsilon"], r["final_accuracy"]) for r in summary["final_accuracy"]) == [(0.0, 0.5),
                                                                                                    (8.0, 0.58)]
    console = Console(width=200, record=True)
    for table in accuracy_tables(summary):
        console.print(table)
    text = console.export_text()
    assert "mean, no noise" in text and "mean, ε = 8" in text and "58.0" in text and "50.0" in text
