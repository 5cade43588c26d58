"""DP: clipping, sensitivity and noise calibration, and Opacus' accountant behind our wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.rdp import RDPAccountant as _RDP

import secrobust
from secrobust.train.dp import (
    PrivacyAccountant,
    clip_rows,
    epsilon_after,
    is_formal,
    sensitivity,
    server_noise_std,
)


def test_clipping_bounds_every_norm_and_keeps_short_rows_and_directions() -> None:
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])

    clipped, was_clipped = clip_rows(rows, 1.0)

    np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), [1.0, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(clipped[0], [0.6, 0.8])
    np.testing.assert_array_equal(clipped[1], rows[1])
    np.testing.assert_allclose(clipped[3], [-0.6, 0.8])
    np.testing.assert_array_equal(was_clipped, [True, False, False, True])


def test_sensitivity_and_server_noise_are_calibrated_per_rule() -> None:
    assert sensitivity("mean", 20, 2.0) == pytest.approx(0.1)
    assert sensitivity("krum", 20, 2.0) == pytest.approx(4.0)
    assert sensitivity("norm-clip", 20, 2.0, options={"tau": 0.5}) == pytest.approx(0.025)
    assert server_noise_std("mean", 20, 2.0, 1.5) == pytest.approx(0.15)
    assert server_noise_std("cclip", 16, 1.0, 2.0, options={"tau": 0.25}) == pytest.approx(2.0 * 0.5 / 16)
    with pytest.raises(ValueError, match="no sensitivity bound"):
        server_noise_std("cclip", 16, 1.0, 2.0)  # no silent 2C: the median tau moves with one worker


def test_epsilon_covers_everything_only_when_nothing_else_is_released() -> None:
    assert is_formal("mean") and not is_formal("geomed")
    assert is_formal("krum", reveal="aggregate") and not is_formal("krum", reveal="weights")
    assert not is_formal("norm-clip") and is_formal("norm-clip", reveal="aggregate")
    assert not is_formal("mean", pre="nnm")  # NNM opens the distances


def test_epsilon_matches_opacus_called_directly() -> None:
    direct = RDPAccountant()
    for _ in range(50):
        direct.step(noise_multiplier=1.1, sample_rate=1.0)

    ours = epsilon_after(1.1, 50, 1e-5)

    assert ours == pytest.approx(direct.get_epsilon(delta=1e-5), rel=1e-12)


def test_epsilon_is_the_full_batch_gaussian_mechanism_composed_over_rounds() -> None:
    # Sample rate 1: RDP(alpha) = T alpha / (2 z^2), converted as Opacus does (Balle et al. 2020).
    z, rounds, delta = 2.0, 100, 1e-5
    alphas = np.array(_RDP.DEFAULT_ALPHAS, dtype=float)
    rdp = rounds * alphas / (2 * z**2)
    by_hand = np.min(rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas))

    ours = epsilon_after(z, rounds, delta)

    assert ours == pytest.approx(by_hand, rel=1e-9)
    assert epsilon_after(1.0, 100, 1e-5) == pytest.approx(96.1163084, rel=1e-6)


def test_privacy_spent_grows_with_rounds_and_shrinks_with_noise() -> None:
    accountant = PrivacyAccountant(1.0)
    spent = []
    for _ in range(3):
        accountant.step(10)
        spent.append(accountant.epsilon(1e-5))

    assert spent[0] < spent[1] < spent[2]
    assert spent[2] == pytest.approx(epsilon_after(1.0, 30, 1e-5))
    assert epsilon_after(4.0, 30, 1e-5) < epsilon_after(1.0, 30, 1e-5)
    assert PrivacyAccountant(1.0).epsilon(1e-5) == 0.0
    with pytest.raises(ValueError, match="noise multiplier must be > 0"):
        PrivacyAccountant(0.0)


def test_revealed_aggregate_carries_both_servers_noise() -> None:
    # The accounting uses one server's sigma; the engine's revealed aggregate has variance 2 sigma^2.
    sigma, d = 0.01, 20_000
    rows = np.zeros((5, d))

    noisy = secrobust.plain_aggregate(rows, rule="mean", f=0, insecure_test_seed=3, dp_noise_std=sigma).aggregate

    assert noisy.std() == pytest.approx(np.sqrt(2) * sigma, rel=0.03)
