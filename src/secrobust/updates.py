"""Turning what a user passes (NumPy, torch, lists of vectors) into the (n, d) matrix the protocol shares."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import ring


def as_matrix(updates: Any) -> np.ndarray:
    """(n, d) float64 from an array, a torch tensor, or a sequence of equal-length vectors.

    Raises ValueError naming the worker whose dimension differs, or the shape that is not (n, d).
    """
    if hasattr(updates, "detach") and hasattr(updates, "cpu"):
        updates = updates.detach().cpu().numpy()
    if isinstance(updates, np.ndarray):
        x = updates
    else:
        rows = [np.asarray(r.detach().cpu().numpy() if hasattr(r, "detach") else r) for r in _iter(updates)]
        if not rows:
            raise ValueError("no updates given: need at least one worker")
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise ValueError(f"update {i} has shape {r.shape}; each worker sends one flat vector")
            if r.shape != rows[0].shape:
                raise ValueError(f"worker {i} sent dimension {r.shape[0]}, worker 0 sent {rows[0].shape[0]}; "
                                 "all updates must have the same dimension")
        x = np.stack(rows)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"updates must be an (n, d) matrix with n, d >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"updates must be real numbers, got dtype {x.dtype}")
    return np.asarray(x, dtype=np.float64)


def _iter(updates: Any) -> Iterable:
    try:
        return list(updates)
    except TypeError:
        raise ValueError(f"updates must be an (n, d) array or a sequence of vectors, got {type(updates).__name__}") from None


def check_unchecked(unchecked: Iterable[int], n: int) -> frozenset[int]:
    ids = frozenset(int(i) for i in unchecked)
    bad = sorted(i for i in ids if not 0 <= i < n)
    if bad:
        raise ValueError(f"unchecked worker indices {bad} are outside 0..{n - 1}")
    return ids


def encode_updates(x: np.ndarray, frac_bits: int, unchecked: frozenset[int] = frozenset()) -> np.ndarray:
    """Honest rows through the checking encoder; rows in ``unchecked`` (simulated Byzantine workers,
    who can send any ring element) through ``encode_unchecked``."""
    out = np.empty(x.shape, dtype=np.uint64)
    honest = np.array([i not in unchecked for i in range(x.shape[0])], dtype=bool)
    if honest.any():
        try:
            out[honest] = ring.encode(x[honest], frac_bits)
        except ValueError as exc:
            raise ValueError(_renumber(str(exc), np.flatnonzero(honest))) from None
    if (~honest).any():
        out[~honest] = ring.encode_unchecked(x[~honest], frac_bits)
    return out


def encode_center(center: Any, d: int, frac_bits: int) -> np.ndarray:
    v = as_matrix(np.asarray(center, dtype=np.float64).reshape(1, -1))[0]
    if v.shape != (d,):
        raise ValueError(f"center has dimension {v.shape[0]}, the updates have {d}")
    try:
        return ring.encode(v, frac_bits)
    except ValueError as exc:
        raise ValueError(f"center: {exc}") from None


def _renumber(message: str, index: np.ndarray) -> str:
    """The encoder names a row of the honest sub-matrix; name the worker instead."""
    parts = message.split(" ", 2)
    if len(parts) == 3 and parts[0] == "update" and parts[1].isdigit():
        return f"update {int(index[int(parts[1])])} {parts[2]}"
    return message
