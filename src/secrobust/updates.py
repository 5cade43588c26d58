"""Turning what a user passes (NumPy, torch, lists of vectors) into the (n, d) matrix the protocol shares."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from .primitives import ring


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


def check_ring_rows(ring_rows: Mapping[int, Any] | None, n: int, d: int) -> dict[int, np.ndarray]:
    """Exact ring vectors for simulated Byzantine workers: {worker in 0..n-1: uint64 (or int64) array (d,)}."""
    out: dict[int, np.ndarray] = {}
    for key, row in dict(ring_rows or {}).items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < n:
            raise ValueError(f"ring_rows maps worker indices in 0..{n - 1} to vectors; got key {key!r}")
        arr = np.asarray(row)
        if arr.dtype not in (np.uint64, np.int64):
            raise ValueError(f"ring_rows[{key}] must be a uint64 (or int64) array of ring elements, got {arr.dtype}")
        if arr.shape != (d,):
            raise ValueError(f"ring_rows[{key}] has shape {arr.shape}; the updates have dimension {d}")
        out[int(key)] = arr.view(np.uint64).copy()
    return out


def safe_center(center: np.ndarray, frac_bits: int) -> np.ndarray:
    """A previous aggregate made usable as cclip's next center: non-finite -> 0, and scaled into the honest
    encoder's range, so one bad round (e.g. large DP noise) can never stop the rounds after it."""
    return carried_center(center, frac_bits)[0]


def carried_center(center: np.ndarray, frac_bits: int) -> tuple[np.ndarray, bool]:
    """``safe_center`` and whether it had to change the center (zeroed or scaled down to the encoder's range
    max_norm(F, d)): a caller that carries aggregates over as centers records the rounds where it did."""
    v = np.asarray(center, dtype=np.float64)
    if not np.isfinite(v).all():
        return np.zeros_like(v), True
    limit = ring.max_norm(frac_bits, v.size)
    norm = float(np.linalg.norm(v))
    return (v * (limit / norm), True) if norm > limit else (v, False)


def encode_updates(x: np.ndarray, frac_bits: int, unchecked: frozenset[int] = frozenset(),
                   ring_rows: Mapping[int, np.ndarray] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Honest rows through the checking encoder; rows in ``unchecked`` (simulated Byzantine workers,
    who can send any ring element) through ``encode_unchecked``; rows in ``ring_rows`` as given.
    Raises ValueError naming the worker whose row the encoder refuses (NaN or inf even when unchecked).
    ``out``: a contiguous uint64 (n, d) buffer to write the encodings into (``ring.encode``'s)."""
    ring_rows = ring_rows or {}
    if not unchecked and not ring_rows:
        return ring.encode(x, frac_bits, out)
    out = np.empty(x.shape, dtype=np.uint64) if out is None else out
    honest = np.array([i not in unchecked and i not in ring_rows for i in range(x.shape[0])], dtype=bool)
    byz = np.array([i in unchecked and i not in ring_rows for i in range(x.shape[0])], dtype=bool)
    if honest.any():
        try:
            out[honest] = ring.encode(x[honest], frac_bits)
        except ValueError as exc:
            raise ValueError(_renumber(str(exc), np.flatnonzero(honest))) from None
    if byz.any():
        try:
            out[byz] = ring.encode_unchecked(x[byz], frac_bits)
        except ValueError as exc:
            raise ValueError(_renumber(str(exc), np.flatnonzero(byz))) from None
    for i, row in ring_rows.items():
        out[i] = row
    return out


def check_updates(x: np.ndarray, frac_bits: int, unchecked: frozenset[int] = frozenset(),
                  ring_rows: Mapping[int, np.ndarray] | None = None) -> None:
    """Raise what ``encode_updates`` raises, without making the encodings (``ring.check_encodable``)."""
    ring_rows = ring_rows or {}
    honest = np.array([i not in unchecked and i not in ring_rows for i in range(x.shape[0])], dtype=bool)
    byz = np.array([i in unchecked and i not in ring_rows for i in range(x.shape[0])], dtype=bool)
    if honest.any():
        try:
            ring.check_encodable(x if honest.all() else x[honest], frac_bits)
        except ValueError as exc:
            raise ValueError(_renumber(str(exc), np.flatnonzero(honest))) from None
    if byz.any():
        try:
            ring.check_finite(x[byz])
        except ValueError as exc:
            raise ValueError(_renumber(str(exc), np.flatnonzero(byz))) from None


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
