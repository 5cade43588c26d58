"""The ring Z_2^64 and its fixed-point encoding.

A real v is encoded as round(v * 2^F) mod 2^64 and held as ``numpy.uint64``; uint64 wrap-around
*is* the ring arithmetic. A product of two encodings carries scale 2^(2F) (or 2^(F+W) for a
weight encoded with W fractional bits) and is decoded with that scale, never truncated.

Range: an honest update u is accepted only if round(u * 2^F) has L2 norm at most 2^30. Then every
squared distance ||x_i - x_j||^2 <= (2 * 2^30)^2 = 2^62 and every squared norm stays below 2^63,
so the Gram and distance values the protocol computes never wrap, whatever the dimension d.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel

RING_DTYPE = np.uint64
DEFAULT_FRAC_BITS = 20
WEIGHT_FRAC_BITS = 32
SCALED_NORM_BOUND = 2.0**27
_INT64_SAFE = 2.0**62
_BLOCK_VALUES = 1 << 20


def max_norm(frac_bits: int = DEFAULT_FRAC_BITS, d: int = 1) -> float:
    """Largest L2 norm an honest update of dimension d may have at F = frac_bits.

    Rounding moves each scaled coordinate by at most 1/2, so the scaled norm grows by at most
    sqrt(d)/2; the bound leaves room for that.
    """
    check_frac_bits(frac_bits)
    return (SCALED_NORM_BOUND - math.sqrt(d) / 2.0) / 2.0**frac_bits


def check_frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not 0 <= frac_bits <= 28:
        raise ValueError(f"frac_bits must be an integer in [0, 28], got {frac_bits!r}")


def encode(values: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS, out: np.ndarray | None = None) -> np.ndarray:
    """Honest encoder: finite values with row L2 norm within max_norm(F, d) -> uint64 ring elements.

    Works on a vector (d,) or a matrix (n, d) whose rows are updates. Raises ValueError naming the
    offending row on NaN/inf or an out-of-range norm; it never wraps silently. ``out``: a C-contiguous uint64
    array of the values' shape to write the encoding into (a buffer kept across rounds), else a new one.
    """
    check_frac_bits(frac_bits)
    x = np.asarray(values, dtype=np.float64)
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    if rows.ndim != 2:
        raise ValueError(f"expected a vector or an (n, d) matrix, got shape {x.shape}")
    if out is None:
        out = np.empty(rows.shape, dtype=np.int64)
    else:
        if out.dtype != RING_DTYPE or out.shape != x.shape or not out.flags.c_contiguous:
            raise ValueError(f"the encoding goes into a contiguous uint64 array of shape {x.shape}")
        out = out.view(np.int64).reshape(rows.shape)
    step = max(1, _BLOCK_VALUES // max(rows.shape[1], 1))

    def encode_rows(start: int, stop: int) -> str | None:
        block = rows[start:stop]
        scaled = np.multiply(block, 2.0**frac_bits)
        np.rint(scaled, out=scaled)
        sq = np.einsum("ij,ij->i", scaled, scaled)
        # A NaN or inf entry makes its row's sum of squares NaN or inf, so only such rows need a closer look.
        for i in np.flatnonzero(~np.isfinite(sq)):
            if not np.isfinite(block[i]).all():
                return f"update {start + int(i)} contains NaN or inf; the honest encoder refuses it"
        over = sq > SCALED_NORM_BOUND**2 * (1 + 1e-6)
        near = ~over & (sq > SCALED_NORM_BOUND**2 * (1 - 1e-6))
        if near.any():
            over |= near & (_exact_squared_norms(scaled) > int(SCALED_NORM_BOUND) ** 2)
        if over.any():
            i = int(np.flatnonzero(over)[0])
            return (f"update {start + i} has L2 norm {np.sqrt(sq[i]) / 2.0**frac_bits:.6g}, above the encoder's range "
                    f"{max_norm(frac_bits, rows.shape[1]):.6g} at frac_bits={frac_bits} "
                    "(squared distances would wrap in Z_2^64); scale the update down or lower frac_bits")
        out[start:stop] = scaled
        return None

    for error in kernel.parallel_for(encode_rows, rows.shape[0], step):
        if error is not None:
            raise ValueError(error)
    return out.view(RING_DTYPE).reshape(x.shape)


def check_encodable(values: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> None:
    """Raise what ``encode(values, frac_bits)`` raises, without making the encoding: one pass of row norms
    decides every row that is finite and clearly inside the range (rounding moves a scaled norm by at most
    sqrt(d)/2); the encoder itself decides the others, in order, so the first bad row is named alike."""
    check_frac_bits(frac_bits)
    x = np.asarray(values, dtype=np.float64)
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    if rows.ndim != 2:
        raise ValueError(f"expected a vector or an (n, d) matrix, got shape {x.shape}")
    sq = np.empty(rows.shape[0])
    step = max(1, _BLOCK_VALUES // max(rows.shape[1], 1))

    def norms(start: int, stop: int) -> None:
        sq[start:stop] = np.einsum("ij,ij->i", rows[start:stop], rows[start:stop])
    for _ in kernel.parallel_for(norms, rows.shape[0], step):
        pass
    with np.errstate(over="ignore", invalid="ignore"):
        scaled_norm = np.sqrt(sq) * 2.0**frac_bits
    clear = np.isfinite(scaled_norm) & (scaled_norm + math.sqrt(rows.shape[1]) / 2.0 < SCALED_NORM_BOUND * (1 - 1e-9))
    for start in range(0, rows.shape[0], step):     # the encoder's blocks, in its order
        if clear[start:start + step].all():
            continue
        try:
            encode(rows[start:start + step], frac_bits)
        except ValueError as exc:
            head, _, rest = str(exc).partition(" ")
            number, _, tail = rest.partition(" ")
            raise ValueError(f"{head} {start + int(number)} {tail}" if number.isdigit() else str(exc)) from None


def _exact_squared_norms(scaled: np.ndarray) -> np.ndarray:
    """Row sums of squares of integer-valued float rows, exactly (as Python ints): float64 cannot tell
    B^2 from B^2 + 1 at B = 2^27, and the validity check compares exactly."""
    ints = scaled.astype(np.int64)
    return np.array([sum(int(v) * int(v) for v in row) for row in ints], dtype=object)


def signed_squared_norm(x: np.ndarray) -> int:
    """sum_j x~_j^2 exactly, x~ the signed representative of each ring word of x (d,) in [-2^31, 2^31): the
    squares are split into 16-bit limbs so that every partial sum is an exact int64 (d < 2^24 words per
    block). Raises ValueError for a word outside [-2^31, 2^31) (no honest encoding is that large)."""
    a = np.ascontiguousarray(np.asarray(x, dtype=RING_DTYPE)).view(np.int64).ravel()
    if a.size and (int(a.max()) >= 1 << 31 or int(a.min()) < -(1 << 31)):
        raise ValueError("a ring vector has a word outside [-2^31, 2^31): not an honest encoding")
    hi, lo = a >> 16, a & 0xFFFF
    total = 0
    for s in range(0, a.size, 1 << 24):
        h, l_ = hi[s:s + (1 << 24)], lo[s:s + (1 << 24)]
        total += (int(np.dot(h, h)) << 32) + (int(np.dot(h, l_)) << 17) + int(np.dot(l_, l_))
    return total


def ceil_norm(x: np.ndarray) -> int:
    """ceil(||x~||) of a ring vector (``signed_squared_norm``), exactly."""
    sq = signed_squared_norm(x)
    r = math.isqrt(sq)
    return r if r * r == sq else r + 1


def encode_unchecked(values: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """What a Byzantine worker can send: any ring element. Finite values are saturated to +-2^62.

    Used to simulate attackers that bypass the honest encoder; the result may make squared
    distances wrap mod 2^64 (the open ring-overflow weakness, see README). Raises ValueError naming
    the row (of a matrix) and entry on NaN or inf: no ring element stands for them.
    """
    check_frac_bits(frac_bits)
    x = np.asarray(values, dtype=np.float64)
    check_finite(x)
    scaled = np.clip(np.rint(x * 2.0**frac_bits), -_INT64_SAFE, _INT64_SAFE)
    return scaled.astype(np.int64).view(RING_DTYPE)


def check_finite(values: np.ndarray) -> None:
    """Raise ValueError naming the first NaN or inf: ``update i ... (entry j)`` for a matrix, ``entry j`` for a vector."""
    finite = np.isfinite(values)
    if finite.all():
        return
    first = np.argwhere(~finite)[0]
    *row, entry = (int(v) for v in first)
    where = f"update {row[0]} " if row else "update "
    what = "NaN" if np.isnan(values[tuple(first)]) else "inf"
    raise ValueError(f"{where}contains {what} (entry {entry}); an unchecked update must be finite "
                     "(NaN and inf are no ring elements)")


def to_signed(ring: np.ndarray) -> np.ndarray:
    """Two's-complement reading of ring elements: the representative in [-2^63, 2^63)."""
    return np.asarray(ring, dtype=RING_DTYPE).view(np.int64)


def decode(ring: np.ndarray, scale_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """int64 representative / 2^scale_bits (use 2F for Gram/distance values, F+W for aggregates)."""
    return to_signed(ring).astype(np.float64) / 2.0**scale_bits


def encode_weights(weights: np.ndarray, frac_bits: int = WEIGHT_FRAC_BITS) -> np.ndarray:
    """Public weights encoded with W fractional bits: round(w * 2^W) mod 2^64."""
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite")
    if np.abs(w).max(initial=0.0) >= 2.0 ** (62 - frac_bits):
        raise ValueError(f"weights must be below 2^{62 - frac_bits} in magnitude at {frac_bits} fractional bits")
    return np.rint(w * 2.0**frac_bits).astype(np.int64).view(RING_DTYPE)


def ring_matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T in Z_2^64 (exact: NumPy's integer matmul wraps)."""
    return np.matmul(a, b.T)

