"""Attacks: shapes, determinism under a seed, and the property that defines each one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secrobust.train import attacks
from secrobust.train.attacks import ATTACKS, alie_z, flips_labels, make_attack, rule_context
from secrobust.train.data import flip_labels


def _rows(h: int = 7, f: int = 3, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.5, size=(h, d)), rng.normal(1.0, 0.5, size=(f, d))


def _context(name: str) -> dict:
    """What the runner passes a rule-aware attack (Krum with f = 3 over the 10 rows of ``_rows``)."""
    return {"rule": "krum", "f": 3} if rule_context(name) else {}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_returns_f_rows_of_dimension_d_for_numpy_and_torch(name: str) -> None:
    honest, own = _rows()
    attack = make_attack(name)

    from_numpy = attack(honest, own, np.random.default_rng(1), **_context(name))
    from_torch = make_attack(name)(torch.from_numpy(honest), torch.from_numpy(own), np.random.default_rng(1),
                                   **_context(name))

    assert from_numpy.shape == (3, 5) and from_numpy.dtype == np.float64
    assert np.all(np.isfinite(from_numpy))
    np.testing.assert_array_equal(from_numpy, from_torch)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_deterministic_under_a_seed_and_leaves_its_inputs_alone(name: str) -> None:
    honest, own = _rows()
    before = honest.copy(), own.copy()
    first = make_attack(name)(honest, own, np.random.default_rng(42), **_context(name))
    second = make_attack(name)(honest, own, np.random.default_rng(42), **_context(name))

    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(honest, before[0])
    np.testing.assert_array_equal(own, before[1])


def test_no_byzantine_workers_gives_an_empty_matrix() -> None:
    honest, _ = _rows()

    out = attacks.alie(honest, np.zeros((0, 5)), np.random.default_rng(0))

    assert out.shape == (0, 5)


def test_sign_flip_sends_minus_scale_times_own_update() -> None:
    honest, own = _rows()

    out = attacks.sign_flip(honest, own, np.random.default_rng(0), scale=8.0)

    np.testing.assert_allclose(out, -8.0 * own)


def test_ipm_sends_minus_epsilon_times_the_honest_mean() -> None:
    honest, own = _rows()

    out = attacks.ipm(honest, own, np.random.default_rng(0), epsilon=0.5)

    for row in out:
        np.testing.assert_allclose(row, -0.5 * honest.mean(axis=0))
    assert np.dot(out[0], honest.mean(axis=0)) < 0


def test_alie_z_is_the_papers_z_max() -> None:
    # n = 20, f = 4: s = floor(20/2 + 1) - 4 = 7, z = Phi^{-1}(13/20) = 0.38532.
    assert alie_z(20, 4) == pytest.approx(0.385320466, abs=1e-8)
    # n = 50, f = 24 (Baruch et al.'s example regime): s = 2, z = Phi^{-1}(48/50) = 1.75069.
    assert alie_z(50, 24) == pytest.approx(1.750686, abs=1e-6)


def test_alie_sends_mean_minus_z_sigma_with_byzfls_default_z_and_the_papers_as_an_option() -> None:
    honest, own = _rows(h=16, f=4, d=30)
    mu, sigma = honest.mean(axis=0), honest.std(axis=0, ddof=1)

    out = attacks.alie(honest, own, np.random.default_rng(0))
    paper = attacks.alie(honest, own, np.random.default_rng(0), z="paper")
    custom = make_attack("alie", z=0.5)(honest, own, np.random.default_rng(0))

    assert attacks.attack_options("alie") == {"z": 1.5}
    np.testing.assert_allclose(out, np.tile(mu - 1.5 * sigma, (4, 1)))
    np.testing.assert_allclose(paper, np.tile(mu - alie_z(20, 4) * sigma, (4, 1)))
    np.testing.assert_allclose(custom[0], mu - 0.5 * sigma)
    assert np.all(np.abs(paper[0] - mu) <= sigma)


@pytest.mark.parametrize("z", ["max", float("nan"), float("inf"), True, None])
def test_alie_refuses_a_z_that_is_neither_a_finite_number_nor_paper(z: object) -> None:
    honest, own = _rows()

    with pytest.raises(ValueError, match="alie z must be a finite number or 'paper'"):
        attacks.alie(honest, own, np.random.default_rng(0), z=z)


def test_mimic_copies_the_honest_worker_farthest_along_the_principal_direction() -> None:
    rng = np.random.default_rng(3)
    honest = rng.normal(0.0, 0.01, size=(10, 8))
    honest[6] += 5.0 * np.eye(8)[2]
    own = np.zeros((3, 8))

    chosen = make_attack("mimic")(honest, own, np.random.default_rng(0))
    fixed = make_attack("mimic", target=1)(honest, own, np.random.default_rng(0))

    np.testing.assert_array_equal(chosen, np.tile(honest[6], (3, 1)))
    np.testing.assert_array_equal(fixed, np.tile(honest[1], (3, 1)))
    with pytest.raises(ValueError, match="target"):
        make_attack("mimic", target=10)(honest, own, np.random.default_rng(0))


def test_gaussian_rows_have_zero_mean_and_the_requested_std() -> None:
    honest, own = _rows(h=5, f=2, d=20_000)

    out = attacks.gaussian(honest, own, np.random.default_rng(0), std=3.0)
    other = attacks.gaussian(honest, own, np.random.default_rng(1), std=3.0)

    assert abs(out.mean()) < 0.05
    assert out.std() == pytest.approx(3.0, rel=0.02)
    assert not np.array_equal(out, other)


def test_zero_and_large_norm() -> None:
    honest, own = _rows()
    mu = honest.mean(axis=0)

    zero = attacks.zero(honest, own, np.random.default_rng(0))
    large = attacks.large_norm(honest, own, np.random.default_rng(0), norm=1e6)

    assert not zero.any()
    np.testing.assert_allclose(np.linalg.norm(large, axis=1), 1e6)
    cosine = large[0] @ mu / (np.linalg.norm(large[0]) * np.linalg.norm(mu))
    assert cosine == pytest.approx(-1.0)


def test_label_flip_is_a_data_attack_with_the_map_y_to_9_minus_y() -> None:
    honest, own = _rows()

    out = attacks.label_flip(honest, own, np.random.default_rng(0))

    np.testing.assert_array_equal(out, own)
    assert flips_labels("label-flip") and not flips_labels("sign-flip")
    np.testing.assert_array_equal(flip_labels(np.arange(10)), np.arange(10)[::-1])


def test_make_attack_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown attack 'nope'; allowed: none, sign-flip"):
        make_attack("nope")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['scael'\] for attack 'sign-flip'; allowed: \['scale'\]"
    ):
        make_attack("sign-flip", scael=2.0)
    with pytest.raises(ValueError, match="allowed: none"):
        make_attack("zero", scale=2.0)
    with pytest.raises(ValueError, match=r"option\(s\) \['rule'\] of attack 'optimal-alie' come from the run"):
        make_attack("optimal-alie", rule="krum")
