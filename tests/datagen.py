"""Synthetic update sets shared by the tests."""

import numpy as np


def updates_with_outliers(seed: int, n: int, d: int, n_bad: int) -> np.ndarray:
    """Honest updates near a common point, the first n_bad of them shifted or scaled far away."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) + 0.3 * rng.normal(size=(n, d))
    for i in range(n_bad):
        kind = rng.integers(3)
        if kind == 0:
            x[i] = x[i] + rng.normal(size=d) * 5
        elif kind == 1:
            x[i] = -4 * x[i]
        else:
            x[i] = x[n_bad:].mean(axis=0) * rng.uniform(-3, 3)
    return x
