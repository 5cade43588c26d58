"""The training loop against the real engine: robustness, secure/plaintext fidelity, DP, plumbing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from runner_spy import EngineSpy

import secrobust
from secrobust.train import runner
from secrobust.train.config import RunSpec
from secrobust.train.data import Dataset
from secrobust.train.dp import epsilon_after
from secrobust.train.runner import RunResult, run


@pytest.fixture
def train(digits: Dataset, one_spec: Callable[..., RunSpec]) -> Callable[..., RunResult]:
    """``train(rule, attack, secure, **sections)``: one small run on digits."""

    def go(rule: str, attack: str, secure: bool, **sections: Any) -> RunResult:
        grid = {"rules": [rule], "attacks": [attack], "secure": [secure], **sections.pop("grid", {})}
        return run(one_spec(grid=grid, **sections), dataset=digits)

    return go


@pytest.mark.parametrize("secure", [True, False])
def test_krum_trains_under_sign_flip_where_the_mean_collapses(
    train: Callable[..., RunResult], secure: bool
) -> None:
    sections = {"train": {"rounds": 20}, "attack_options": {"sign-flip": {"scale": 8.0}}}

    krum = train("krum", "sign-flip", secure, **sections)
    mean = train("mean", "sign-flip", secure, **sections)

    assert krum.final_accuracy >= 0.75
    assert mean.final_accuracy <= 0.25
    assert krum.final_accuracy - mean.final_accuracy >= 0.5
    assert not krum.weights[:, krum.byzantine].any()
    np.testing.assert_allclose(mean.weights, 1 / 20)


@pytest.mark.parametrize(
    ("rule", "attack"), [("krum", "alie"), ("multi-krum", "sign-flip"), ("geomed", "ipm")]
)
def test_secure_and_plaintext_training_pick_the_same_workers_and_reach_the_same_accuracy(
    train: Callable[..., RunResult], rule: str, attack: str
) -> None:
    secure = train(rule, attack, True, train={"rounds": 15})
    plain = train(rule, attack, False, train={"rounds": 15})

    assert secure.byzantine == plain.byzantine
    np.testing.assert_array_equal(secure.weights, plain.weights)
    assert abs(secure.final_accuracy - plain.final_accuracy) <= 0.005
    assert secure.final_accuracy > 0.5


def test_runs_are_reproducible_and_seeds_matter(train: Callable[..., RunResult]) -> None:
    a = train("geomed", "gaussian", False)
    b = train("geomed", "gaussian", False)
    c = train("geomed", "gaussian", False, grid={"seeds": [1]})

    assert a.history == b.history and np.array_equal(a.weights, b.weights)
    assert a.byzantine != c.byzantine or not np.array_equal(a.weights, c.weights)


def test_byzantine_rows_are_unchecked_and_only_they_are_attacked(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = EngineSpy(monkeypatch)
    flipped = train("mean", "label-flip", False, train={"rounds": 1})
    honest = train("mean", "none", False, train={"rounds": 1})

    byz = flipped.byzantine
    good = [i for i in range(20) if i not in byz]
    assert spy.calls[0]["unchecked"] == tuple(byz)
    np.testing.assert_array_equal(spy.calls[0]["updates"][good], spy.calls[1]["updates"][good])
    assert not np.allclose(spy.calls[0]["updates"][byz], spy.calls[1]["updates"][byz])
    assert honest.byzantine == byz


def test_dp_clips_rows_calibrates_server_noise_and_reports_opacus_epsilon(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = EngineSpy(monkeypatch)

    result = train("mean", "none", False, train={"rounds": 5}, dp={"clip": 0.05, "noise_multiplier": 1.0})

    assert result.epsilon == pytest.approx(epsilon_after(1.0, 5, 1e-5))
    assert result.record()["dp_formal"] is True
    assert result.history[-1]["epsilon"] == pytest.approx(result.epsilon)
    assert result.clipped_rows > 0
    for call in spy.calls:
        assert call["dp_noise_std"] == pytest.approx(1.0 * 0.05 / (20 - 4))  # the servers aggregate >= n - f rows
        assert np.linalg.norm(call["updates"], axis=1).max() <= 0.05 + 1e-12


def test_cclip_is_centred_on_the_previous_aggregate(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = EngineSpy(monkeypatch)

    train("cclip", "sign-flip", False, train={"rounds": 3}, rule_options={"cclip": {"tau": 1.0}})

    assert not spy.calls[0]["center"].any()
    np.testing.assert_array_equal(spy.calls[1]["center"], spy.calls[0]["aggregate"])
    np.testing.assert_array_equal(spy.calls[2]["center"], spy.calls[1]["aggregate"])


def test_honest_rows_are_scaled_into_the_encoder_range(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = EngineSpy(monkeypatch)
    monkeypatch.setattr(runner, "ENCODER_MARGIN", 1e-9)

    result = train("mean", "none", False, train={"rounds": 2})

    honest = [i for i in range(20) if i not in result.byzantine]
    assert result.rescaled_rows == 2 * 16
    bound = 1e-9 * secrobust.max_norm(20, 650)
    assert np.linalg.norm(spy.calls[0]["updates"][honest], axis=1).max() == pytest.approx(bound)


def test_a_diverged_run_stops_and_keeps_its_evaluation_grid(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    def poison(t: int, result: Any) -> Any:
        if t == 2:
            result.aggregate[:] = np.nan
        return result

    EngineSpy(monkeypatch, replace=poison)

    result = train("mean", "none", False, train={"rounds": 10, "eval_every": 5})

    assert result.diverged
    assert len(result.weights) == 3
    assert [h["round"] for h in result.history] == [0, 3, 5, 10]
    assert result.final_accuracy <= 0.2


@pytest.mark.parametrize("reveal", ["weights", "aggregate"])
def test_dp_cclip_on_shares_projects_a_noisy_center_into_the_clip_ball(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch, reveal: str
) -> None:
    """With DP the previous noisy aggregate soon has a norm above the clip norm C; the runner's center is its
    projection onto the ball of radius C, where every accepted row lies (a public post-processing, so the
    bound holds), and every round equals its twin. A center past C on shares: tests/test_cclip_center.py."""
    spy = EngineSpy(monkeypatch)

    result = train("cclip@" + reveal, "sign-flip", True, train={"rounds": 3},
                   dp={"clip": 0.05, "noise_multiplier": 0.5}, rule_options={"cclip": {"tau": 0.02}})

    assert not result.diverged
    centers = [np.linalg.norm(call["center"]) for call in spy.calls[1:]]
    assert max(centers) <= 0.05 and max(centers) == pytest.approx(0.05 * (1 - 2**-8))
    for call in spy.calls:
        options = {k: call[k] for k in ("center", "tau", "norm_bound", "reveal", "dp_noise_std", "unchecked",
                                        "frac_bits", "insecure_test_seed") if k in call}
        twin = secrobust.plain_aggregate(call["updates"], "cclip", 4, **options)
        np.testing.assert_array_equal(call["aggregate"], twin.aggregate)


def test_a_center_past_the_encoders_range_is_scaled_and_recorded(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A noise-carrying aggregate beyond the encoder's range would make the next round refuse its center:
    the runner scales it into range and says so in the record."""
    huge = lambda i, result: replace(result, aggregate=np.full_like(result.aggregate, 1e6))  # noqa: E731
    EngineSpy(monkeypatch, replace=huge)

    result = train("cclip", "none", False, train={"rounds": 3}, rule_options={"cclip": {"tau": 1.0}})

    assert result.record()["rescaled_centers"] == 3


def test_fixed_dropout_gives_every_call_the_same_masks_and_fresh_dropout_does_not() -> None:
    import torch

    from secrobust.train.config import TrainConfig
    from secrobust.train.models import FlatAdapter, build_model

    model = build_model("mnist-net", (1, 28, 28), 10, seed=0)
    model.train()
    adapter = FlatAdapter(model)
    theta = adapter.get()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand((8, 1, 28, 28), generator=gen), torch.arange(8) % 10
    tc = TrainConfig(batch_size=8)
    idx = np.arange(8)

    def update(masks: torch.Tensor | None) -> np.ndarray:
        return runner._local_update(model, adapter, theta, x, y, idx, tc, np.random.default_rng(0), masks)

    with torch.random.fork_rng(devices=[]):   # the global RNG other tests see stays as it was
        torch.manual_seed(5)
        masks = torch.get_rng_state()
        first, second = update(masks), update(masks)
        np.testing.assert_array_equal(first, second)
        torch.manual_seed(5)
        np.testing.assert_array_equal(update(None), first)   # the state it restores is the one it was given
        assert not np.array_equal(update(None), first)        # fresh masks: the global RNG moved on
