"""Additive secret sharing in Z_2^64, plain and seed-compressed.

x = x0 + x1 (mod 2^64). Seed-compressed: x0 = PRG(seed, label) goes to S0 as the 16-byte seed,
x1 = x - x0 goes to S1 as d words. Each share alone is uniform, so it says nothing about x.
"""

from __future__ import annotations

import numpy as np

from . import prg


def share(x: np.ndarray, seed: bytes, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """Two explicit shares of x: (PRG(seed, purpose), x - PRG(seed, purpose))."""
    x = np.asarray(x, dtype=np.uint64)
    mask = prg.ring_stream(seed, purpose, x.size).reshape(x.shape)
    return mask, x - mask


def share_compressed(x: np.ndarray, seed: bytes, purpose: str) -> tuple[bytes, np.ndarray]:
    """Seed-compressed shares of a vector x: (seed for S0, x - PRG(seed) for S1)."""
    _, masked = share(x, seed, purpose)
    return prg.check_seed(seed), masked


def expand_share(seed: bytes, purpose: str, start: int, stop: int) -> np.ndarray:
    """Words [start, stop) of the share that a seed stands for."""
    return prg.ring_stream(seed, purpose, stop - start, start)


def reconstruct(share0: np.ndarray, share1: np.ndarray) -> np.ndarray:
    """x = x0 + x1 mod 2^64."""
    a, b = np.asarray(share0, dtype=np.uint64), np.asarray(share1, dtype=np.uint64)
    if a.shape != b.shape:
        raise ValueError(f"shares have different shapes {a.shape} and {b.shape}")
    return a + b
