"""Additive secret sharing in Z_2^64, plain and seed-compressed.

x = x0 + x1 (mod 2^64). Seed-compressed: x0 = PRG(seed, label) stands for S0's share as a 16-byte seed,
x1 = x - x0 goes to S1 as d words. Each share alone is uniform, so it says nothing about x.
In a round, S0's share of worker i is keyed by ``input_key(master, i)``, where the master is the dealer's
seed for the triple's mask A_0: S0's input share *is* A_0, so only S1 has a mask to open.
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


INPUT_PURPOSE = "input-share"


def input_key(master: bytes, position: int) -> bytes:
    """The key of S0's share of the worker at ``position`` in the round's plan (what S0 hands that worker)."""
    return prg.derive_seed(master, prg.label("input-key", int(position)))


def input_stream(master: bytes, position: int) -> prg.RingStream:
    """S0's input share of the worker at ``position`` as a stream from column 0 (``input_rows`` chunk by chunk)."""
    return prg.RingStream(input_key(master, position), INPUT_PURPOSE)


def input_rows(master: bytes, positions, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Columns [start, stop) of S0's input shares for the given plan positions, one row each (written into
    ``out``, a uint64 matrix of that shape with contiguous rows, when given)."""
    positions = list(positions)
    if out is None:
        out = np.empty((len(positions), stop - start), dtype=np.uint64)
    elif out.dtype != np.uint64 or out.shape != (len(positions), stop - start):
        raise ValueError(f"input rows go into a uint64 matrix of shape {(len(positions), stop - start)}")
    for row, i in enumerate(positions):
        prg.fill_ring_stream(input_key(master, i), INPUT_PURPOSE, out[row], start)
    return out


def reconstruct(share0: np.ndarray, share1: np.ndarray) -> np.ndarray:
    """x = x0 + x1 mod 2^64."""
    a, b = np.asarray(share0, dtype=np.uint64), np.asarray(share1, dtype=np.uint64)
    if a.shape != b.shape:
        raise ValueError(f"shares have different shapes {a.shape} and {b.shape}")
    return a + b
