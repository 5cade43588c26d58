"""The fixed-point scale as a setting: F derived from the public norm bound, and what happens to a row above it.

The honest encoder holds a vector of L2 norm r at F fractional bits iff r 2^F + sqrt(d)/2 <= 2^27
(``ring.max_norm``). Scaling every update by 2^-k is the same as lowering F by k: the encodings, and so the
round, are identical. ``fit_frac_bits`` gives the largest F (at most the default 20, so that rounds whose
updates fit are unchanged) for a bound; ``resolve`` applies the caller's policy to honest rows above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .primitives import ring

OVER_BOUND = ("exclude", "clip", "error")
"""What an honest row above the public bound gets: rejected like any out-of-range vector (the default, as in
a deployment; it then counts against f, as every rejection does, which weakens the rule: docs/ranges.md),
scaled down to the bound (an honest worker is then never rejected and never lowers f), or an error naming
every such row."""
_SHOWN = 8


def fit_frac_bits(norm: float, d: int, most: int = ring.DEFAULT_FRAC_BITS) -> int:
    """The largest F <= ``most`` whose encoder holds every vector of dimension d with L2 norm <= ``norm``:
    norm 2^F + sqrt(d)/2 <= 2^27. Raises ValueError when even F = 0 cannot (norm above 2^27 - sqrt(d)/2)."""
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"a norm bound must be finite and >= 0, got {norm!r}")
    for f in range(int(most), -1, -1):
        if norm <= ring.max_norm(f, d):
            return f
    raise ValueError(f"L2 norm {norm:.6g} is above {ring.max_norm(0, d):.6g}, the encoder's range at frac_bits=0 "
                     f"and d={d}: scale the updates down")


@dataclass(frozen=True)
class Scale:
    """The round's fixed point: F, the public bound in real units, and whether the bound came from the data."""

    frac_bits: int
    norm_bound: float
    """The bound every accepted vector has: the caller's ``norm_bound``, or the encoder's range at F."""
    from_data: bool
    """True when F was lowered from 20 to fit the largest honest update (a data-dependent bound)."""

    @property
    def resolution(self) -> float:
        """The encoding's step 2^-F."""
        return 2.0 ** -self.frac_bits


def resolve(x: np.ndarray, honest: np.ndarray, frac_bits: int | None, norm_bound: float | None,
            over_bound: str) -> tuple[Scale, np.ndarray, dict[int, str]]:
    """(the scale, rows to send, {worker: reason} for honest rows excluded). ``honest`` marks rows that go
    through the honest encoder. With ``frac_bits`` None, F is the largest that fits ``norm_bound``, or, with
    no bound, the largest honest row (never above 20). Honest rows above the bound then get ``over_bound``."""
    if over_bound not in OVER_BOUND:
        raise ValueError(f"over_bound must be one of {', '.join(OVER_BOUND)}, got {over_bound!r}")
    d = x.shape[1]
    norms, finite = honest_norms(x, honest)
    from_data = False
    if frac_bits is None:
        if norm_bound is not None:
            frac_bits = fit_frac_bits(float(norm_bound), d) if _positive(norm_bound) else ring.DEFAULT_FRAC_BITS
        else:
            top = float(np.nanmax(norms)) if finite.any() else 0.0
            frac_bits = fit_frac_bits(top, d)
            from_data = frac_bits < ring.DEFAULT_FRAC_BITS
    ring.check_frac_bits(frac_bits)
    limit = ring.max_norm(frac_bits, d)
    bound = float(norm_bound) if norm_bound is not None and _positive(norm_bound) else limit
    over = np.flatnonzero(finite & (norms > min(bound, limit)))
    if over.size == 0:
        return Scale(frac_bits, bound, from_data), x, {}
    if over_bound == "error":
        raise ValueError(_over_message(norms, over, bound, frac_bits, d))
    if over_bound == "clip":
        x = x.copy()
        target = min(bound, limit)
        x[over] *= (target / norms[over])[:, None]
        return Scale(frac_bits, bound, from_data), x, {}
    reasons = {int(i): f"update norm {norms[i]:.6g} is above the bound {bound:.6g} (over_bound='exclude')"
               for i in over}
    return Scale(frac_bits, bound, from_data), x, reasons


_NORM_ROWS = 4
"""Rows squared at a time: the temporary stays a few rows, not the n x d copy ``np.linalg.norm`` makes."""


def honest_norms(x: np.ndarray, honest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2 norm of each honest finite row, NaN elsewhere; which honest rows are finite). Each norm is
    sqrt(add.reduce(row * row)), bit for bit what ``np.linalg.norm(x, axis=1)`` gives, in one pass over x."""
    norms = np.full(x.shape[0], np.nan)
    finite = np.zeros(x.shape[0], dtype=bool)
    rows = np.flatnonzero(honest)
    for start in range(0, rows.size, _NORM_ROWS):
        idx = rows[start:start + _NORM_ROWS]
        block = x[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] == idx.size - 1 else x[idx]
        with np.errstate(over="ignore"):
            sq = np.add.reduce(block * block, axis=1)
        ok = np.isfinite(sq)
        for j in np.flatnonzero(~ok):
            ok[j] = bool(np.isfinite(block[j]).all())
        finite[idx] = ok
        norms[idx[ok]] = np.sqrt(sq[ok])
    return norms, finite


def _positive(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(float(value)) and float(value) > 0


def _over_message(norms: np.ndarray, over: np.ndarray, bound: float, frac_bits: int, d: int) -> str:
    rows = ", ".join(f"{int(i)} ({norms[i]:.6g})" for i in over[:_SHOWN])
    more = f" and {over.size - _SHOWN} more" if over.size > _SHOWN else ""
    top = float(norms[over].max())
    hint = f"norm_bound={top:.6g} holds them"
    try:
        fit = fit_frac_bits(top, d, 28)
        hint += (f"; at this bound frac_bits <= {fit} fits (scaling the updates by 2^-k is the same as lowering "
                 f"frac_bits by k)") if fit < frac_bits else ""
    except ValueError:
        hint += "; no frac_bits fits them: scale the updates down"
    return (f"{over.size} update(s) above the bound {bound:.6g} at frac_bits={frac_bits}: {rows}{more}. {hint}; "
            "or pass over_bound='clip' or 'exclude'")
