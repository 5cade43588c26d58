"""Synthetic update sets for the quick start and the benchmarks (NumPy RNG: simulation data only)."""

from __future__ import annotations

import numpy as np


def synthetic_updates(n: int, d: int, byzantine: int = 0, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    """n updates of dimension d: honest ones scattered around a common direction, the first
    ``byzantine`` ones replaced by a large sign-flipped copy of the honest mean."""
    if not 0 <= byzantine < n:
        raise ValueError(f"need 0 <= byzantine < n, got byzantine={byzantine}, n={n}")
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d) / np.sqrt(d)
    updates = direction + scale * rng.normal(size=(n, d)) / np.sqrt(d)
    updates[:byzantine] = -10.0 * updates[byzantine:].mean(axis=0)
    return updates
