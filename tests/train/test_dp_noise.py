"""The noise on the revealed aggregate, measured over many secure rounds (issue 22, point 3).

Each server adds N(0, sigma^2) to its share; the accountant is told z = sigma / Delta, the noise of *one*
server, so the guarantee holds if the other removes or reveals its own. The revealed aggregate therefore
carries variance 2 sigma^2 per coordinate. These tests run the real two-server protocol with fixed seeds,
subtract the noiseless plaintext aggregate (equal bit for bit without noise), and check the residuals'
variance with a chi-square test at level 1e-6 on each side: deterministic, and far from both sigma^2 (one
server only) and an off-by-sqrt(2) calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import secrobust
from secrobust.train.dp import cohort_noise_std, sensitivity, server_noise_std

C, Z, N, F, D = 1.0, 1.3, 10, 2, 300
TAU = 0.3


def _rows(k: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(k, D))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.random.default_rng(seed + 1).uniform(0, C, size=(k, 1))


def _chi2_accepts(residuals: np.ndarray, variance: float) -> tuple[bool, float]:
    r = np.concatenate([np.ravel(v) for v in residuals])
    statistic = float(np.sum(r**2) / variance)
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], df=r.size)
    return bool(low <= statistic <= high), statistic / r.size


def test_full_participation_noise_is_two_servers_of_z_times_the_sensitivity() -> None:
    options = {"tau": TAU}
    sigma = server_noise_std("norm-clip", N - F, C, Z, f=F, options=options)
    delta = sensitivity("norm-clip", N - F, C, f=F, options=options)
    assert sigma == pytest.approx(Z * delta)  # what the accountant is told: z = one server's sigma / Delta
    x = _rows(N, 7)
    residuals = []
    for seed in range(40):
        noisy = secrobust.aggregate(x, "norm-clip", F, tau=TAU, norm_bound=C, dp_noise_std=sigma,
                                    insecure_test_seed=seed).aggregate
        clean = secrobust.plain_aggregate(x, "norm-clip", F, tau=TAU, norm_bound=C, insecure_test_seed=seed).aggregate
        residuals.append(noisy - clean)

    accepted, ratio = _chi2_accepts(np.array(residuals), 2 * sigma**2)
    assert accepted, ratio
    assert not _chi2_accepts(np.array(residuals), sigma**2)[0]          # not one server's noise alone
    assert not _chi2_accepts(np.array(residuals), 4 * sigma**2)[0]      # nor twice the std
    assert abs(np.mean(residuals)) < 6 * np.sqrt(2) * sigma / np.sqrt(np.size(residuals))


def test_a_sampled_round_releases_the_same_noise_whatever_the_cohorts_size() -> None:
    """The runner gives the engine per-server noise z Delta_g / k for k rows and multiplies the result by k/(qN):
    the released noise must be z Delta_g / (qN) per server, independent of k (the sampled Gaussian mechanism's
    fixed sigma), and the signal the fixed-denominator sum."""
    q, workers = 0.25, 40
    n_ref = q * workers
    target = Z * TAU / n_ref
    residuals = []
    for seed, k in enumerate([5, 6, 9, 10, 14, 17] * 6):
        x = _rows(k, 100 + seed)
        sigma_k = cohort_noise_std("norm-clip", C, Z, k, {"tau": TAU})
        assert sigma_k * k / n_ref == pytest.approx(target)
        noisy = secrobust.aggregate(x, "norm-clip", F, tau=TAU, norm_bound=C, dp_noise_std=sigma_k,
                                    insecure_test_seed=seed).aggregate
        released = k / n_ref * noisy
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        fixed_sum = (x * np.minimum(1.0, TAU / norms)).sum(axis=0) / n_ref
        residuals.append(released - fixed_sum)

    accepted, ratio = _chi2_accepts(np.array(residuals), 2 * target**2)
    assert accepted, ratio
    assert not _chi2_accepts(np.array(residuals), target**2)[0]
